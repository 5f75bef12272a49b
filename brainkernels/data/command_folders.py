"""Checks of the input and output folders that the commands share (preprocess, import-dicom,
register, and the methods' inference commands); each problem is one line naming the option and
the folder."""

from __future__ import annotations

import os
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


def check_output_folder(output_dir: str | os.PathLike, input_dir: str | os.PathLike | None,
                        overwrite: bool) -> Path:
    """``output_dir`` as a Path, after checking that it may be written: not ``input_dir`` or inside
    it, and new or empty unless ``overwrite`` (the command then replaces its outputs of the same
    names; other files stay). Checked before any work, so a refused command has changed nothing."""
    output_dir = Path(output_dir)
    if input_dir is not None and output_dir.resolve().is_relative_to(Path(input_dir).resolve()):
        raise BrainkernelsError(f"--out {output_dir}: must not be --in or inside it (outputs would be read as inputs)")
    if output_dir.exists() and not output_dir.is_dir():
        raise BrainkernelsError(f"--out {output_dir}: exists and is not a folder")
    if output_dir.is_dir() and not overwrite and any(output_dir.iterdir()):
        raise BrainkernelsError(f"--out {output_dir}: the folder is not empty; choose a new folder, or pass "
                                "--overwrite to replace the outputs of the same names in it")
    return output_dir


def check_output_files(paths: list[Path], overwrite: bool) -> None:
    """Refuse to replace any of ``paths`` (output files named by the user) without ``overwrite``."""
    for path in paths:
        if path.is_dir():
            raise BrainkernelsError(f"{path}: is a folder, not a file name")
        if path.exists() and not overwrite:
            raise BrainkernelsError(f"{path}: exists; pass --overwrite to replace it")
