"""``brainkernels preprocess``: apply a preprocessing preset to every NIfTI file under a folder,
mirroring the folder tree into the output folder."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from brainkernels.data.command_folders import check_output_folder, nifti_inputs
from brainkernels.data.preprocess import (
    PRESETS,
    Footprint,
    Pipeline,
    check_coregistration,
    foreground_footprint,
    preset_pipeline,
)
from brainkernels.data.volume import Volume, load_nifti, save_nifti
from brainkernels.errors import BrainkernelsError

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
    parser.add_argument(
        "--register-to", type=Path, default=None, metavar="FILE",
        help="first register each scan rigidly to this reference scan (ct and mr; as `brainkernels register`, "
             "which also writes transforms and QC figures); a failed registration stops with an error",
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


def _registered_first(pipeline: Pipeline, reference_path: Path, preset: str) -> Pipeline:
    """``pipeline`` preceded by rigid registration to the scan at ``reference_path``."""
    from brainkernels.data.registration import register

    if preset == "label":
        raise _UsageError("--register-to does not apply to --pipeline label (register the scans, then resample "
                          "their label maps with the scans' transforms)")
    if not reference_path.is_file():
        raise _UsageError(f"--register-to {reference_path}: no such file")
    reference = load_nifti(reference_path)

    def register_to_reference(volume: Volume) -> Volume:
        result = register(volume, reference)
        if result.failed:
            raise ValueError(f"registration to {reference_path} failed (similarity {result.similarity:.3f}); "
                             "`brainkernels register` writes a QC figure of it")
        return result.volume

    return Pipeline((("register", register_to_reference), *pipeline.steps))


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
        if arguments.register_to is not None:
            pipeline = _registered_first(pipeline, arguments.register_to, arguments.pipeline)
        files = nifti_inputs(arguments.input_dir)
        check_output_folder(arguments.output_dir, arguments.input_dir, arguments.overwrite)
    except (_UsageError, BrainkernelsError, ValueError, TypeError) as error:
        if arguments.debug:
            raise
        print(f"brainkernels preprocess: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    footprints = []
    show_progress = not arguments.quiet and sys.stderr.isatty()
    for relative in tqdm(files, desc=f"preprocess {arguments.pipeline}", unit="scan", disable=not show_progress):
        try:
            volume = load_nifti(arguments.input_dir / relative)
            if volume.data.min() == volume.data.max():  # a blank or failed export; CT equalisation makes it all 1
                warnings.warn(f"{arguments.input_dir / relative}: every voxel is {float(volume.data.min()):g}; "
                              "its output means nothing", stacklevel=1)
            output = pipeline(volume)
            save_nifti(output, arguments.output_dir / relative, dtype=_output_dtype(arguments.pipeline, output))
        except (ValueError, OSError) as error:
            if arguments.debug:
                raise
            print(f"brainkernels preprocess: error: {relative}: {error}", file=sys.stderr)
            return PROCESSING_ERROR
        if arguments.pipeline == "ct":
            footprints.append(foreground_footprint(output, name=str(relative)))
    if footprints:
        _report_coregistration(footprints, arguments.quiet)
    if not arguments.quiet:
        print(f"preprocessed {len(files)} scans ({arguments.pipeline}) into {arguments.output_dir}")
    return 0
