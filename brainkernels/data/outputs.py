"""The rule every command that writes into an output folder follows: the folder is new or empty,
or ``--overwrite`` lets the command replace its outputs of the same names there (other files
stay). Checked before any work, so a refused command has changed nothing."""

from __future__ import annotations

import os
from pathlib import Path

from brainkernels.errors import BrainkernelsError


def check_output_folder(folder: str | os.PathLike, overwrite: bool, option: str = "--out") -> Path:
    """``folder`` as a Path, after checking it may be written into."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BrainkernelsError(f"{option} {folder}: exists and is not a folder")
    if folder.is_dir() and not overwrite and any(folder.iterdir()):
        raise BrainkernelsError(f"{option} {folder}: the folder is not empty; choose a new folder, or pass "
                                "--overwrite to replace the outputs of the same names in it")
    return folder


def check_output_files(paths: list[Path], overwrite: bool) -> None:
    """Refuse to replace any of ``paths`` (output files named by the user) without ``overwrite``."""
    for path in paths:
        if path.is_dir():
            raise BrainkernelsError(f"{path}: is a folder, not a file name")
        if path.exists() and not overwrite:
            raise BrainkernelsError(f"{path}: exists; pass --overwrite to replace it")
