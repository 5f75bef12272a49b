"""Checks shared by the cohort readers: folders, NIfTI names, tables and label maps.

Every error names the file or folder at fault and says what was expected, because a reader's
errors are what a user sees when their copy of a data set is incomplete or mislaid.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from brainkernels.data.volume import NIFTI_SUFFIXES, Volume, load_nifti


def visible_entries(folder: Path) -> list[Path]:
    """Entries of ``folder``, sorted, without hidden ones: ``.DS_Store``, and the ``.name.XXXX``
    temporary files of a writer that has not finished (``brainkernels.atomic``)."""
    return sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))


def require_cohort_folder(root: str | Path, expected: str) -> Path:
    """``root`` as a Path, after checking that it is an existing, non-empty folder."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder (expected {expected})")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder (expected {expected})")
    if not visible_entries(root):
        raise ValueError(f"{root}: empty folder (expected {expected})")
    return root


def nifti_stem(path: Path) -> str | None:
    """``name`` for ``name.nii.gz`` or ``name.nii``; None for any other file name."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def find_nifti(folder: Path, stem: str) -> Path | None:
    """``folder/stem.nii.gz`` or ``folder/stem.nii``, whichever exists; None if neither does."""
    found = [folder / f"{stem}{suffix}" for suffix in NIFTI_SUFFIXES if (folder / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        raise ValueError(f"{folder}: both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def nifti_files_by_stem(folder: Path) -> dict[str, Path]:
    """The NIfTI files of a layout folder that holds nothing else (``scans/``, ``masks/``)."""
    files: dict[str, Path] = {}
    for entry in visible_entries(folder):
        stem = nifti_stem(entry)
        if stem is None or not entry.is_file():
            raise ValueError(f"{entry}: not a NIfTI file; {folder} may hold only <name>.nii.gz files")
        if stem in files:
            raise ValueError(f"{folder}: both {files[stem].name} and {entry.name} exist; keep one")
        files[stem] = entry
    return files


def read_table(
    path: Path, required_columns: Sequence[str], text_columns: Collection[str], separator: str
) -> pd.DataFrame:
    """A CSV/TSV table with its ``required_columns`` checked; ``text_columns`` are read as strings
    so identifiers such as ``0012`` keep their leading zeros."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        table = pd.read_csv(path, sep=separator, dtype={column: str for column in text_columns})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable {path.suffix.lstrip('.').upper()} table ({error})") from error
    missing = [column for column in required_columns if column not in table.columns]
    if missing:
        found = ", ".join(map(str, table.columns))
        raise ValueError(f"{path}: missing required column(s) {', '.join(missing)}; found {found}")
    if table.empty:
        raise ValueError(f"{path}: the table has a header but no rows")
    return table


def line_number(row_index: int) -> int:
    """The line of a table row in its file: line 1 is the header."""
    return row_index + 2


def require_identifiers(table: pd.DataFrame, column: str, path: Path, prefix: str = "") -> list[str]:
    """The values of an identifier column without ``prefix``, after checking that none is blank
    and none repeats."""
    values = table[column].str.strip().str.removeprefix(prefix)
    blank = values.isna() | (values == "")
    if blank.any():
        raise ValueError(f"{path}: column {column} is empty on line {line_number(int(np.flatnonzero(blank)[0]))}")
    repeated = values[values.duplicated()]
    if not repeated.empty:
        line = line_number(int(repeated.index[0]))
        raise ValueError(f"{path}: column {column} repeats {repeated.iloc[0]!r} (line {line})")
    return values.tolist()


def load_label_map(path: Path, allowed: Collection[int], meaning: str) -> Volume:
    """A label map whose voxel values must all lie in ``allowed`` (``meaning`` explains them)."""
    volume = load_nifti(path)
    values = torch.unique(volume.data).tolist()
    unexpected = [value for value in values if value not in allowed]
    if unexpected:
        shown = ", ".join(f"{value:g}" for value in unexpected[:10]) + (", ..." if len(unexpected) > 10 else "")
        raise ValueError(f"{path}: unexpected label values {shown}; expected {meaning}")
    return volume


def require_same_grid(reference: Volume, other: Volume) -> None:
    """Check that ``other`` lies on the voxel grid of ``reference`` (same shape and affine)."""
    if other.shape != reference.shape:
        raise ValueError(f"{other.path}: shape {other.shape} differs from {reference.path}: {reference.shape}")
    if not np.allclose(other.affine, reference.affine, atol=1e-4):
        raise ValueError(f"{other.path}: affine differs from {reference.path} (not on the same voxel grid)")
