"""``brainkernels preprocess``: apply a preprocessing preset to every NIfTI file under a folder,
mirroring the folder tree into the output folder."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from brainkernels.data.preprocess import (
    PRESETS,
    Footprint,
    check_coregistration,
    foreground_footprint,
    preset_pipeline,
)
from brainkernels.data.volume import Volume, is_nifti, load_nifti, save_nifti

USAGE_ERROR = 2
PROCESSING_ERROR = 1


class _UsageError(Exception):
    """An invocation that cannot run: reported in one line, with exit status 2."""


def register_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``preprocess`` to ``commands`` (the ``add_subparsers()`` object of the main parser)."""
    parser = commands.add_parser(
        "preprocess",
        help="resample, pad/crop and normalise every NIfTI file in a folder",
        description=(
            "Apply a preprocessing preset to every .nii/.nii.gz file under --in (recursively), "
            "writing each result to the same relative path under --out. Presets: "
            "ct = resample, pad/crop, CT histogram equalisation, then a co-registration check (PPR); "
            "mr = resample, pad/crop, 1st-99th percentile normalisation (PatchDDM, INR); "
            "label = nearest-neighbour resample, pad/crop with 0 (label maps, masks)."
        ),
    )
    parser.add_argument("--pipeline", required=True, choices=PRESETS, help="preprocessing preset")
    parser.add_argument("--in", dest="input_dir", required=True, type=Path, metavar="DIR", help="folder of NIfTI files")
    parser.add_argument("--out", dest="output_dir", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument(
        "--spacing", type=float, nargs="+", default=[1.0], metavar="MM",
        help="voxel size in mm: one value or three (D H W); default 1",
    )
    parser.add_argument(
        "--shape", type=int, nargs="+", default=[256], metavar="N",
        help="output voxels per axis: one value or three (D H W); default 256",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty output folder")
    parser.set_defaults(run=run_preprocess)
    return parser


def _one_or_three(values: list, option: str) -> object:
    if len(values) == 1:
        return values[0]
    if len(values) == 3:
        return tuple(values)
    raise _UsageError(f"{option} takes one value or three (D H W); got {len(values)}")


def _nifti_files(input_dir: Path) -> list[Path]:
    """NIfTI files under ``input_dir``, relative to it; hidden files and folders are skipped
    (among them the temporaries of interrupted atomic writes)."""
    if not input_dir.is_dir():
        raise _UsageError(f"--in {input_dir}: not a folder")
    relative = (path.relative_to(input_dir) for path in input_dir.rglob("*") if path.is_file())
    visible = [path for path in relative if not any(part.startswith(".") for part in path.parts)]
    if not visible:
        raise _UsageError(f"--in {input_dir}: the folder is empty")
    found = sorted(path for path in visible if is_nifti(path))
    if not found:
        raise _UsageError(f"--in {input_dir}: no .nii or .nii.gz files in the folder or below it")
    return found


def _check_output_dir(output_dir: Path, input_dir: Path, overwrite: bool) -> None:
    if output_dir.resolve().is_relative_to(input_dir.resolve()):
        raise _UsageError(f"--out {output_dir}: must not be --in or inside it (outputs would be read as inputs)")
    if output_dir.exists() and not output_dir.is_dir():
        raise _UsageError(f"--out {output_dir}: exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise _UsageError(f"--out {output_dir}: the folder is not empty; pass --overwrite to write into it anyway")


def _output_dtype(pipeline: str, volume: Volume) -> type | None:
    """uint8 for label maps that fit it (BraTS, CQ500 masks), float32 otherwise."""
    if pipeline != "label":
        return None
    data = volume.data
    fits_uint8 = bool((data == data.round()).all() and data.min() >= 0 and data.max() <= 255)
    return np.uint8 if fits_uint8 else None


def _report_coregistration(footprints: list[Footprint], quiet: bool) -> None:
    """Warnings go to stderr whatever ``quiet`` says: a misregistered scan spoils PPR."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flagged = check_coregistration(footprints)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    if not quiet:
        print(f"co-registration check: {len(flagged)} of {len(footprints)} scans look off the common grid")


def run_preprocess(arguments: argparse.Namespace) -> int:
    """Run ``brainkernels preprocess``; 0 on success, 2 for an unusable invocation, 1 when a
    file cannot be processed (outputs written before it are complete)."""
    try:
        pipeline = preset_pipeline(
            arguments.pipeline,
            spacing=_one_or_three(arguments.spacing, "--spacing"),
            shape=_one_or_three(arguments.shape, "--shape"),
        )
        files = _nifti_files(arguments.input_dir)
        _check_output_dir(arguments.output_dir, arguments.input_dir, arguments.overwrite)
    except (_UsageError, ValueError, TypeError) as error:
        print(f"brainkernels preprocess: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    footprints = []
    show_progress = not arguments.quiet and sys.stderr.isatty()
    for relative in tqdm(files, desc=f"preprocess {arguments.pipeline}", unit="scan", disable=not show_progress):
        try:
            output = pipeline(load_nifti(arguments.input_dir / relative))
            save_nifti(output, arguments.output_dir / relative, dtype=_output_dtype(arguments.pipeline, output))
        except (ValueError, OSError) as error:
            print(f"brainkernels preprocess: error: {relative}: {error}", file=sys.stderr)
            return PROCESSING_ERROR
        if arguments.pipeline == "ct":
            footprints.append(foreground_footprint(output, name=str(relative)))
    if footprints:
        _report_coregistration(footprints, arguments.quiet)
    if not arguments.quiet:
        print(f"preprocessed {len(files)} scans ({arguments.pipeline}) into {arguments.output_dir}")
    return 0
