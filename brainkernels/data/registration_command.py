"""``brainkernels register``: register every NIfTI scan under a folder to one reference scan,
in parallel over scans, writing the registered scans, their transforms, a QC figure per scan
and a CSV that flags failed registrations."""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from brainkernels.data.command_folders import check_output_folder, nifti_inputs
from brainkernels.errors import BrainkernelsError

REGISTRATION_CSV = "registration.csv"


def register_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``register`` to ``commands`` (the ``add_subparsers()`` object of the main parser)."""
    parser = commands.add_parser(
        "register",
        help="register every NIfTI scan in a folder rigidly to one reference scan",
        description=(
            "Register every .nii/.nii.gz file under --in to --reference (rigid, 6 degrees of freedom, or "
            "affine; Mattes mutual information over a three-level pyramid, SimpleITK) and resample it onto "
            "the reference's grid. Writes OUT/<name>.nii.gz, OUT/transforms/<name>.tfm (ITK: reference "
            f"point -> scan point, LPS mm), OUT/qc/<name>.png (reference edges over the registered scan) and "
            f"OUT/{REGISTRATION_CSV}. A registration whose normalised mutual information with the reference "
            "is below --min-similarity is flagged failed in the CSV and its scan is not written."
        ),
    )
    parser.add_argument("--in", dest="input_dir", required=True, type=Path, metavar="DIR", help="folder of NIfTI scans")
    parser.add_argument("--reference", required=True, type=Path, metavar="FILE", help="the scan to register to")
    parser.add_argument("--out", dest="output_dir", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--transform", choices=("rigid", "affine"), default="rigid",
                        help="rigid (default, as the PPR paper) or affine (12 degrees of freedom)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="scans registered at once (default: one per CPU core, at most one per scan)")
    parser.add_argument("--min-similarity", type=float, default=None, metavar="NMI",
                        help="normalised mutual information below which a registration is flagged failed "
                             "(1 = unrelated, 2 = identical; default 1.075)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty output folder")
    parser.set_defaults(run=run_register)
    return parser


def run_register(arguments: argparse.Namespace) -> int:
    """0 when every scan registered, 1 when some failed or could not be read (the rest are written)."""
    from brainkernels.atomic import write_csv
    from brainkernels.data.registration import MIN_SIMILARITY

    if not arguments.reference.is_file():
        raise BrainkernelsError(f"--reference {arguments.reference}: no such file")
    files = nifti_inputs(arguments.input_dir)
    check_output_folder(arguments.output_dir, arguments.input_dir, arguments.overwrite)
    workers = min(len(files), os.cpu_count() or 1) if arguments.workers is None else arguments.workers
    if workers < 1:
        raise BrainkernelsError(f"--workers must be at least 1; got {workers}")
    settings = (arguments.reference, arguments.input_dir, arguments.output_dir, arguments.transform,
                MIN_SIMILARITY if arguments.min_similarity is None else arguments.min_similarity)
    progress = tqdm(total=len(files), desc=f"register {arguments.transform}", unit="scan", disable=arguments.quiet)
    threads = max(1, (os.cpu_count() or 1) // workers)
    if workers == 1:
        _start_worker(threads)
        rows = []
        for relative in files:
            rows.append(_register_one(relative, *settings))
            progress.update()
    else:
        with ProcessPoolExecutor(workers, get_context("spawn"), initializer=_start_worker, initargs=(threads,)) as pool:
            futures = [pool.submit(_register_one, relative, *settings) for relative in files]
            for future in futures:
                future.add_done_callback(lambda _: progress.update())
            rows = [future.result() for future in futures]
    progress.close()
    write_csv(arguments.output_dir / REGISTRATION_CSV, rows)
    problems = [row for row in rows if row["status"] != "registered"]
    for row in problems:
        print(f"brainkernels register: {row['scan']}: {row['status']}: {row['reason']}", file=sys.stderr)
    if not arguments.quiet:
        print(f"registered {len(rows) - len(problems)} of {len(rows)} scans to {arguments.reference} into "
              f"{arguments.output_dir} ({REGISTRATION_CSV} has the similarity of each)")
    return 1 if problems else 0


def _start_worker(threads: int) -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _register_one(relative: Path, reference_path: Path, input_dir: Path, output_dir: Path, transform: str,
                  min_similarity: float) -> dict:
    """Register one scan and write its outputs; returns its CSV row (errors become rows too)."""
    import SimpleITK as sitk

    from brainkernels.atomic import atomic_path
    from brainkernels.data.layouts.common import nifti_stem
    from brainkernels.data.registration import qc_figure, register
    from brainkernels.data.volume import load_nifti, save_nifti
    from brainkernels.figures import save_figure

    stem = relative.parent / nifti_stem(relative)
    row = {"scan": str(relative), "status": "error", "similarity": "", "metric": "", "reason": "",
           "transform": f"transforms/{stem}.tfm", "qc": f"qc/{stem}.png"}
    try:
        reference = load_nifti(reference_path)
        result = register(load_nifti(input_dir / relative), reference, transform=transform,
                          min_similarity=min_similarity)
    except (ValueError, OSError) as error:
        return {**row, "reason": str(error), "transform": "", "qc": ""}
    with atomic_path(output_dir / row["transform"]) as temporary:
        sitk.WriteTransform(result.transform, str(temporary))
    save_figure(qc_figure(result, reference, str(relative)), output_dir / row["qc"])
    if result.failed:
        reason = f"similarity {result.similarity:.3f} is below {min_similarity}; see {row['qc']}; scan not written"
    else:
        save_nifti(result.volume, output_dir / relative)
        reason = ""
    return {**row, "status": "failed" if result.failed else "registered", "similarity": round(result.similarity, 4),
            "metric": round(result.metric, 4), "reason": reason}
