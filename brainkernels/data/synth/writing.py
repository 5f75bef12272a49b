"""What the three cohort writers share: the description of a layout, seeded random streams, and
atomic tables."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainkernels.atomic import atomic_path


@dataclass(frozen=True)
class CohortLayout:
    """How one kind of cohort is planned and written.

    ``plan(subjects, seed)`` draws every subject's record (JSON-ready; ``record["name"]`` names
    the subject); ``write_subject(root, record, shape)`` renders and writes one subject;
    ``write_tables(root, records, shape)`` writes what spans subjects. ``entries`` are the
    top-level names (glob patterns) the layout consists of."""

    kind: str
    fov_mm: float
    plan: Callable[..., list[dict]]
    write_subject: Callable[[Path, dict, int], None]
    write_tables: Callable[[Path, list[dict], int], None]
    entries: tuple[str, ...]


def random_stream(seed: int, purpose: int, index: int) -> np.random.Generator:
    """An independent generator for item ``index`` of a cohort drawn from ``seed``; ``purpose``
    separates streams used for different things. Item i gets the same stream whatever the
    cohort's size, so the first subjects of a larger cohort are the subjects of a smaller one."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(purpose, index)))


def write_table(path: Path, columns: Sequence[str], rows: Iterable[dict], *, delimiter: str) -> None:
    """A CSV (``delimiter=","``) or TSV (``"\\t"``) table, written atomically."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), delimiter=delimiter, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
