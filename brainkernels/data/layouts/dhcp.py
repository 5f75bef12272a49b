"""dHCP cohorts in BIDS (INR): ``participants.tsv``, and per subject a sessions table with each
session's postmenstrual age and its T2-weighted scan (see docs/data-layouts.md).

Identifiers are accepted with or without their BIDS prefix (``sub-``, ``ses-``): the dHCP
release writes bare ids in its tables, BIDS tools write prefixed ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from brainkernels.data.layouts.common import (
    find_nifti,
    line_number,
    load_label_map,
    read_table,
    require_cohort_folder,
    require_identifiers,
    visible_entries,
)
from brainkernels.data.volume import Volume

AGE_RANGE_WEEKS = (26.0, 45.0)
"""Postmenstrual ages of the dHCP neonates; the INR's time input maps this range onto [0, 1]."""
PLAUSIBLE_AGE_WEEKS = (20.0, 60.0)
"""Postmenstrual ages a scan can have; one outside is a typo or a unit error (days, years)."""
_LAYOUT = "a dHCP/BIDS cohort: participants.tsv and sub-<id>/ folders"


@dataclass(frozen=True)
class DHCPScan:
    """One session of one subject: its age and its T2-weighted scan (and brain mask, if any)."""

    subject_id: str
    session_id: str
    age_weeks: float
    t2w_path: Path
    mask_path: Path | None

    @property
    def normalised_age(self) -> float:
        """t = (age - 26) / (45 - 26); ages outside 26-45 weeks fall outside [0, 1]."""
        return normalise_age(self.age_weeks)


def normalise_age(age_weeks: float) -> float:
    low, high = AGE_RANGE_WEEKS
    return (age_weeks - low) / (high - low)


def plausible_age(age_weeks: float) -> bool:
    low, high = PLAUSIBLE_AGE_WEEKS
    return math.isfinite(age_weeks) and low <= age_weeks <= high


def read_dhcp(root: str | Path) -> list[DHCPScan]:
    """Describe every session under ``root`` (no image is loaded), sorted by subject and age,
    checking that the tables and the folders agree."""
    root = require_cohort_folder(root, _LAYOUT)
    participants_path = root / "participants.tsv"
    participants = read_table(participants_path, ["participant_id"], ["participant_id"], separator="\t")
    subjects = require_identifiers(participants, "participant_id", participants_path, prefix="sub-")

    folders = {entry.name for entry in visible_entries(root) if entry.is_dir()}
    unlisted = sorted(folders - {f"sub-{subject}" for subject in subjects})
    if unlisted:
        raise ValueError(f"{root / unlisted[0]}: folder not listed in {participants_path}")
    scans = [scan for subject in subjects for scan in _read_subject(root, subject, participants_path)]
    return sorted(scans, key=_subject_then_age)


def scans_by_subject(scans: Iterable[DHCPScan]) -> dict[str, list[DHCPScan]]:
    """The scans of each subject, youngest first; subjects in sorted order."""
    grouped: dict[str, list[DHCPScan]] = {}
    for scan in sorted(scans, key=_subject_then_age):
        grouped.setdefault(scan.subject_id, []).append(scan)
    return grouped


def load_dhcp_mask(scan: DHCPScan) -> Volume:
    """The brain mask of a session (0 outside, 1 brain)."""
    if scan.mask_path is None:
        raise ValueError(f"sub-{scan.subject_id} ses-{scan.session_id} has no brain mask")
    return load_label_map(scan.mask_path, {0, 1}, "0 outside the brain, 1 brain")


def _read_subject(root: Path, subject: str, participants_path: Path) -> list[DHCPScan]:
    folder = root / f"sub-{subject}"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder, but {participants_path} lists participant {subject!r}")
    sessions_path = folder / f"sub-{subject}_sessions.tsv"
    table = read_table(sessions_path, ["session_id", "scan_age"], text_columns=["session_id"], separator="\t")
    sessions = require_identifiers(table, "session_id", sessions_path, prefix="ses-")
    ages = _ages(table, sessions_path)

    folders = {entry.name for entry in visible_entries(folder) if entry.is_dir()}
    unlisted = sorted(folders - {f"ses-{session}" for session in sessions})
    if unlisted:
        raise ValueError(f"{folder / unlisted[0]}: session folder not listed in {sessions_path}")
    scans = []
    for session, age in zip(sessions, ages, strict=True):
        anat = folder / f"ses-{session}" / "anat"
        stem = f"sub-{subject}_ses-{session}"
        t2w = find_nifti(anat, f"{stem}_T2w")
        if t2w is None:
            expected = anat / f"{stem}_T2w.nii.gz"
            raise FileNotFoundError(f"{expected}: no such file, but {sessions_path} lists session {session!r}")
        scans.append(DHCPScan(subject, session, age, t2w, find_nifti(anat, f"{stem}_desc-brain_mask")))
    return scans


def _ages(table: pd.DataFrame, path: Path) -> list[float]:
    """The ``scan_age`` column, after checking that every age is a plausible postmenstrual age."""
    ages = pd.to_numeric(table["scan_age"], errors="coerce").tolist()
    low, high = PLAUSIBLE_AGE_WEEKS
    for row, age in enumerate(ages):
        if not plausible_age(age):
            given = table["scan_age"].iloc[row]
            raise ValueError(
                f"{path}: scan_age on line {line_number(row)} is {'empty' if pd.isna(given) else given}; "
                f"expected a postmenstrual age in weeks, {low:g} to {high:g}"
            )
    return ages


def _subject_then_age(scan: DHCPScan) -> tuple[str, float, str]:
    return scan.subject_id, scan.age_weeks, scan.session_id
