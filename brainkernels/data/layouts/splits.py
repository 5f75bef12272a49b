"""Train/validation/test splits by subject, so that no subject's scans straddle two splits.

The order is set by hashing ``"<seed>:<subject id>"`` with SHA-256 rather than by a random
number generator, so a split is the same on every machine and every version of numpy or torch,
does not depend on the order of the input, and adding a subject moves few others: each subject's
rank among the rest is fixed, only the cut points shift.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class SubjectSplit:
    """Subject ids of each split, sorted."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]


def split_by_subject(
    subject_ids: Iterable[str], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> SubjectSplit:
    """Split the distinct ``subject_ids`` (repeats, e.g. one per scan, count once) into train,
    validation and test sets holding ``fractions`` of the subjects, rounded to whole subjects.

    Filter records with it, e.g. ``[scan for scan in scans if scan.subject_id in split.train]``.
    """
    subjects = sorted(set(subject_ids))
    if not subjects:
        raise ValueError("split_by_subject: no subject ids given")
    valid = len(fractions) == 3 and all(math.isfinite(f) and f >= 0 for f in fractions)
    if not (valid and math.isclose(sum(fractions), 1.0)):
        raise ValueError(
            f"fractions must be three non-negative numbers summing to 1 (train, validation, test); got {fractions!r}"
        )
    ranked = sorted(subjects, key=lambda subject: hashlib.sha256(f"{seed}:{subject}".encode()).hexdigest())
    end_train = _round_half_up(fractions[0] * len(ranked))
    end_validation = _round_half_up((fractions[0] + fractions[1]) * len(ranked))
    return SubjectSplit(
        train=tuple(sorted(ranked[:end_train])),
        validation=tuple(sorted(ranked[end_train:end_validation])),
        test=tuple(sorted(ranked[end_validation:])),
    )


def _round_half_up(value: float) -> int:
    # round() would round 8.5 to 8 but 9.5 to 10; cut points should not depend on parity.
    return math.floor(value + 0.5)
