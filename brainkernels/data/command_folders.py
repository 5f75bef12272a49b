"""Checks of the input and output folders that the data commands share (preprocess, import-dicom,
register); each problem is one line naming the option and the folder."""

from __future__ import annotations

from pathlib import Path

from brainkernels.data.volume import nifti_files_below
from brainkernels.errors import BrainkernelsError


def nifti_inputs(input_dir: Path) -> list[Path]:
    """NIfTI files under ``input_dir``, relative to it; hidden entries (among them the temporaries
    of interrupted atomic writes) are passed over, and entries named like a NIfTI file that are not
    one are named (``nifti_files_below``)."""
    if not input_dir.is_dir():
        raise BrainkernelsError(f"--in {input_dir}: not a folder")
    try:
        found = nifti_files_below(input_dir)
    except ValueError as error:
        raise BrainkernelsError(f"--in {error}") from None
    return [path.relative_to(input_dir) for path in found]


def check_output_folder(output_dir: Path, input_dir: Path, overwrite: bool) -> None:
    """``output_dir`` may be written: not ``input_dir`` or inside it, and empty unless ``overwrite``."""
    if output_dir.resolve().is_relative_to(input_dir.resolve()):
        raise BrainkernelsError(f"--out {output_dir}: must not be --in or inside it (outputs would be read as inputs)")
    if output_dir.exists() and not output_dir.is_dir():
        raise BrainkernelsError(f"--out {output_dir}: exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise BrainkernelsError(f"--out {output_dir}: the folder is not empty; pass --overwrite to write into it anyway")
