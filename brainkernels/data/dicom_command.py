"""``brainkernels import-dicom``: one NIfTI scan in Hounsfield units per study folder, chosen
among the study's DICOM series as the PPR paper did, and a CSV saying what became of every series."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from brainkernels.data.command_folders import check_output_folder
from brainkernels.errors import BrainkernelsError

SELECTION_CSV = "selection.csv"


def register_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``import-dicom`` to ``commands`` (the ``add_subparsers()`` object of the main parser)."""
    parser = commands.add_parser(
        "import-dicom",
        help="convert DICOM studies to NIfTI, one non-contrast scan per study",
        description=(
            "Read every study folder under --in (one folder per patient or study, DICOM files at any depth "
            "below it), choose one scan per study as the PPR paper did (no contrast agent; the thinnest "
            "slices and a soft-tissue kernel unless the options below say otherwise), and write it as "
            f"OUT/<study>.nii.gz in Hounsfield units (RAS). OUT/{SELECTION_CSV} lists every series: chosen, "
            "skipped or refused, and why. Series are refused for missing slices, uneven slice spacing, mixed "
            "orientations, non-image objects (SR, RTSTRUCT) and pixel data that cannot be decoded; a gantry "
            "tilt is resampled onto an orthogonal grid."
        ),
    )
    parser.add_argument("--in", dest="input_dir", required=True, type=Path, metavar="DIR",
                        help="folder of study folders")
    parser.add_argument("--out", dest="output_dir", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--slice-thickness", type=float, default=None, metavar="MM",
                        help="take the series with the slice thickness closest to MM (default: the thinnest)")
    parser.add_argument("--kernel", default=None, metavar="REGEX",
                        help="take only series whose convolution kernel matches REGEX (case-insensitive)")
    parser.add_argument("--description", default=None, metavar="REGEX",
                        help="take only series whose description matches REGEX (case-insensitive)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty output folder")
    parser.set_defaults(run=run_import_dicom)
    return parser


def run_import_dicom(arguments: argparse.Namespace) -> int:
    """0 when every study gave a scan, 1 when some gave none (the others are written)."""
    from brainkernels.atomic import write_csv
    from brainkernels.data.dicom import SeriesCriteria, import_study
    from brainkernels.data.volume import save_nifti

    criteria = SeriesCriteria(arguments.slice_thickness, arguments.kernel, arguments.description)
    studies = _study_folders(arguments.input_dir)
    check_output_folder(arguments.output_dir, arguments.input_dir, arguments.overwrite)
    rows, without_scan = [], []
    for folder in tqdm(studies, desc="import-dicom", unit="study", disable=arguments.quiet):
        volume, decisions = import_study(folder, criteria)
        output = arguments.output_dir / f"{folder.name}.nii.gz"
        if volume is not None:
            integral = bool((volume.data == volume.data.round()).all() and volume.data.abs().max() < 2**15)
            save_nifti(volume, output, dtype=np.int16 if integral else None)
        else:
            without_scan.append(folder.name)
        rows += [_row(decision, output) for decision in decisions]
        if not decisions:
            rows.append({**dict.fromkeys(_COLUMNS, ""), "study": folder.name, "status": "refused",
                         "reason": "no DICOM files"})
    write_csv(arguments.output_dir / SELECTION_CSV, rows)
    for folder_name in without_scan:
        print(f"brainkernels import-dicom: {folder_name}: no usable series (reasons in {SELECTION_CSV})",
              file=sys.stderr)
    if not arguments.quiet:
        print(f"imported {len(studies) - len(without_scan)} of {len(studies)} studies into {arguments.output_dir} "
              f"({SELECTION_CSV} says what became of each series)")
    return 1 if without_scan else 0


_COLUMNS = ("study", "series_number", "description", "kernel", "slice_thickness_mm", "slices", "status", "reason",
            "output", "series_uid")


def _row(decision, output: Path) -> dict:
    series = decision.series
    return dict(zip(_COLUMNS, (
        series.study, series.number, series.description, series.kernel, series.slice_thickness,
        len(series.paths), decision.status, decision.reason, output.name if decision.status == "chosen" else "",
        series.uid,
    )))  # fmt: skip


def _study_folders(input_dir: Path) -> list[Path]:
    if not input_dir.is_dir():
        raise BrainkernelsError(f"--in {input_dir}: not a folder")
    folders = sorted(entry for entry in input_dir.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not folders:
        raise BrainkernelsError(f"--in {input_dir}: no study folders in it (expected one folder per study)")
    return folders
