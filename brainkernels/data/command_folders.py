"""Checks of the input and output folders that the data commands share (preprocess, import-dicom,
register); each problem is one line naming the option and the folder."""

from __future__ import annotations

from pathlib import Path

from brainkernels.data.volume import is_nifti
from brainkernels.errors import BrainkernelsError


def nifti_inputs(input_dir: Path) -> list[Path]:
    """NIfTI files under ``input_dir``, relative to it; hidden files and folders are skipped
    (among them the temporaries of interrupted atomic writes)."""
    if not input_dir.is_dir():
        raise BrainkernelsError(f"--in {input_dir}: not a folder")
    relative = (path.relative_to(input_dir) for path in input_dir.rglob("*") if path.is_file())
    visible = [path for path in relative if not any(part.startswith(".") for part in path.parts)]
    if not visible:
        raise BrainkernelsError(f"--in {input_dir}: the folder is empty")
    found = sorted(path for path in visible if is_nifti(path))
    if not found:
        raise BrainkernelsError(f"--in {input_dir}: no .nii or .nii.gz files in the folder or below it")
    return found


def check_output_folder(output_dir: Path, input_dir: Path, overwrite: bool) -> None:
    """``output_dir`` may be written: not ``input_dir`` or inside it, and empty unless ``overwrite``."""
    if output_dir.resolve().is_relative_to(input_dir.resolve()):
        raise BrainkernelsError(f"--out {output_dir}: must not be --in or inside it (outputs would be read as inputs)")
    if output_dir.exists() and not output_dir.is_dir():
        raise BrainkernelsError(f"--out {output_dir}: exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise BrainkernelsError(f"--out {output_dir}: the folder is not empty; pass --overwrite to write into it anyway")
