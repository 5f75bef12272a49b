"""CQ500-style head CT cohorts (PPR): ``reads.csv``, ``scans/<name>.nii.gz``, optional
``masks/<name>.nii.gz`` and ``structures.nii.gz`` (see docs/data-layouts.md).

Each scan gets one label per structure (left hemisphere bleed, right hemisphere bleed, skull
fracture) by majority vote of the three readers, as in the PPR paper: "If there was a
disagreement between the three raters, we used the majority vote as our ground truth."
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from brainkernels.data.layouts.common import (
    line_number,
    load_label_map,
    nifti_files_by_stem,
    read_table,
    require_cohort_folder,
    require_identifiers,
)
from brainkernels.data.volume import Volume

READERS = ("R1", "R2", "R3")
REQUIRED_FINDINGS = ("ICH", "BleedLocation-Left", "BleedLocation-Right", "Fracture")
REQUIRED_COLUMNS = ("name", *(f"{reader}:{finding}" for reader in READERS for finding in REQUIRED_FINDINGS))
MASK_MEANING = "0 none, 1 haemorrhage, 2 fracture"
STRUCTURES_MEANING = "0 background, 1 left hemisphere, 2 right hemisphere, 3 skull"
_LAYOUT = "a CQ500-style cohort: reads.csv and scans/<name>.nii.gz"


@dataclass(frozen=True)
class CQ500Scan:
    """One head CT and its majority-vote labels; ``mask_path`` is set only where a voxel mask
    exists (synthetic cohorts)."""

    name: str
    path: Path
    mask_path: Path | None
    left_bleed: bool
    right_bleed: bool
    fracture: bool

    @property
    def healthy(self) -> bool:
        return not (self.left_bleed or self.right_bleed or self.fracture)


@dataclass(frozen=True)
class CQ500Cohort:
    """The scans of a cohort in ``reads.csv`` order, and its structure map if it has one."""

    root: Path
    scans: tuple[CQ500Scan, ...]
    structures_path: Path | None


def read_cq500(root: str | Path) -> CQ500Cohort:
    """Describe the cohort under ``root`` (no image is loaded), checking that ``reads.csv`` and
    the files on disk agree."""
    root = require_cohort_folder(root, _LAYOUT)
    reads_path = root / "reads.csv"
    table = read_table(reads_path, REQUIRED_COLUMNS, text_columns=["name"], separator=",")
    names = require_identifiers(table, "name", reads_path)
    votes = _binary_columns(table, names, reads_path)

    scans_folder = root / "scans"
    if not scans_folder.is_dir():
        raise FileNotFoundError(f"{scans_folder}: no such folder (expected {_LAYOUT})")
    scan_paths = _files_matching_rows(scans_folder, names, reads_path, required=True)
    masks_folder = root / "masks"
    mask_paths = _files_matching_rows(masks_folder, names, reads_path, required=False) if masks_folder.is_dir() else {}

    left = _majority([votes[f"{r}:ICH"] & votes[f"{r}:BleedLocation-Left"] for r in READERS])
    right = _majority([votes[f"{r}:ICH"] & votes[f"{r}:BleedLocation-Right"] for r in READERS])
    fracture = _majority([votes[f"{r}:Fracture"] for r in READERS])
    scans = tuple(
        CQ500Scan(name, scan_paths[name], mask_paths.get(name), left[i], right[i], fracture[i])
        for i, name in enumerate(names)
    )
    structures_path = root / "structures.nii.gz"
    return CQ500Cohort(root, scans, structures_path if structures_path.is_file() else None)


def load_cq500_mask(scan: CQ500Scan) -> Volume:
    """The voxel mask of a scan (0 none, 1 haemorrhage, 2 fracture)."""
    if scan.mask_path is None:
        raise ValueError(f"scan {scan.name!r} has no mask (expected masks/{scan.name}.nii.gz)")
    return load_label_map(scan.mask_path, {0, 1, 2}, MASK_MEANING)


def load_cq500_structures(cohort: CQ500Cohort) -> Volume:
    """The structure map shared by all scans (1 left hemisphere, 2 right hemisphere, 3 skull)."""
    if cohort.structures_path is None:
        raise FileNotFoundError(f"{cohort.root / 'structures.nii.gz'}: no such file")
    return load_label_map(cohort.structures_path, {0, 1, 2, 3}, STRUCTURES_MEANING)


def _binary_columns(table: pd.DataFrame, names: list[str], path: Path) -> pd.DataFrame:
    """The readers' columns as booleans, after checking that every value is 0 or 1."""
    columns = {}
    for column in REQUIRED_COLUMNS[1:]:
        values = pd.to_numeric(table[column], errors="coerce")
        invalid = ~values.isin([0, 1])
        if invalid.any():
            row = int(invalid.to_numpy().nonzero()[0][0])
            raise ValueError(
                f"{path}: column {column} must hold 0 or 1; line {line_number(row)} "
                f"(name {names[row]!r}) has {_plain(table[column].iloc[row])}"
            )
        columns[column] = values.astype(bool)
    return pd.DataFrame(columns)


def _plain(value) -> str:
    """A table value as the user typed it: 2, nan or 'yes', not np.int64(2) or np.float64(nan)."""
    return repr(value) if isinstance(value, str) else str(value.item() if hasattr(value, "item") else value)


def _majority(per_reader: list[pd.Series]) -> list[bool]:
    """Per scan, whether more than half of the readers voted yes."""
    return (sum(vote.astype(int) for vote in per_reader) * 2 > len(per_reader)).tolist()


def _files_matching_rows(folder: Path, names: list[str], reads_path: Path, required: bool) -> dict[str, Path]:
    """The ``<name>.nii.gz`` files of ``folder``; every file needs a row in ``reads.csv``, and
    when ``required`` every row needs a file."""
    files = nifti_files_by_stem(folder)
    known = set(names)
    unlisted = [stem for stem in files if stem not in known]
    if unlisted:
        raise ValueError(f"{files[unlisted[0]]}: no row named {unlisted[0]!r} in {reads_path}")
    if required:
        missing = [name for name in names if name not in files]
        if missing:
            raise FileNotFoundError(
                f"{folder / (missing[0] + '.nii.gz')}: no such file, but {reads_path} lists {missing[0]!r}"
                + (f" ({len(missing)} scans missing)" if len(missing) > 1 else "")
            )
    return files
