"""`brainkernels ppr train|detect|evaluate`."""

from __future__ import annotations

import argparse

from brainkernels.options import at_least
from brainkernels.runtime.command import (
    add_cache_option,
    add_export_verb,
    add_model_option,
    add_subjects_option,
    add_train_verb,
    add_workers_option,
)


def _detect(arguments: argparse.Namespace) -> int:
    from brainkernels.ppr.evaluate import detect

    written = detect(arguments.model, arguments.input, arguments.out, mode=arguments.mode, tile=arguments.tile,
                     device=arguments.device, masks=arguments.masks, workers=arguments.workers,
                     overwrite=arguments.overwrite, quiet=arguments.quiet, precision=arguments.precision)
    print(f"wrote {len(written)} anomaly map(s) with PNG overlays to {arguments.out}")
    return 0


def _evaluate(arguments: argparse.Namespace) -> int:
    from brainkernels.ppr.evaluate import evaluate

    aurocs = evaluate(arguments.model, arguments.data, arguments.out, mode=arguments.mode, tile=arguments.tile,
                      device=arguments.device, workers=arguments.workers, quiet=arguments.quiet,
                      precision=arguments.precision, subjects=arguments.subjects, cache=arguments.cache,
                      negatives=arguments.negatives, by_kind=arguments.by_kind)
    scores = list(aurocs)
    width = max(26, *(len(name) + 2 for name in aurocs[scores[0]]))
    print(f"{'AUROC':<{width}}" + "".join(f"{score:>24}" for score in scores))
    for name in aurocs[scores[0]]:
        print(f"{name:<{width}}" + "".join(f"{aurocs[score][name]:>24.3f}" for score in scores))
    return 0


def _inference_options(parser: argparse.ArgumentParser) -> None:
    from brainkernels.ppr.train import PPRConfig

    add_model_option(parser, PPRConfig, "ppr")
    parser.add_argument("--mode", choices=("dense", "patchwise"), default="dense",
                        help="dense: exact fully convolutional evaluation (fast); patchwise: one patch per voxel")
    parser.add_argument("--tile", type=at_least(1, "--tile"), default=64,
                        help="dense tile edge in voxels (memory grows with it)")
    from brainkernels.ppr.infer import PRECISIONS

    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_workers_option(parser)
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="dtype of the dense pass; auto: bfloat16 on a CPU with AVX512-BF16 or AMX "
                             "(several times faster there; maps differ by bfloat16 rounding)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def register_command(commands) -> None:
    ppr = commands.add_parser("ppr", help="patch position regression: anomaly detection in head CT",
                              description="Patch position regression (Bieder et al., MIDL 2022).")
    verbs = ppr.add_subparsers(dest="verb", required=True, metavar="VERB")

    from brainkernels.ppr.train import METHOD, NEGATIVES, RUN_FILES, PPRConfig, train

    add_train_verb(verbs, PPRConfig, train, help="train on the healthy scans of a CQ500-style cohort",
                   description="Train PPR (or --model ae, the autoencoder baseline) on healthy scans.",
                   data_help="CQ500-style folder (reads.csv, scans/)",
                   summary=lambda settings, run: f"trained {settings.model} (m={settings.network_size}); "
                                                 f"run folder: {run}")
    add_export_verb(verbs, method=METHOD, method_files=RUN_FILES)

    detect = verbs.add_parser("detect", help="anomaly maps (NIfTI + PNG) for scans",
                              description="Write an anomaly map per scan, with the scan's geometry, and a PNG.")
    _inference_options(detect)
    detect.add_argument("--input", required=True, help="a .nii/.nii.gz scan or a folder of them")
    detect.add_argument("--out", required=True, help="output folder (new or empty)")
    detect.add_argument("--overwrite", action="store_true", help="replace the maps of the same names in --out")
    detect.add_argument("--masks", default=None, metavar="FOLDER",
                        help="voxel masks <name>.nii.gz of the scans (0 none, 1 haemorrhage, 2 fracture; synthetic "
                             "cohorts have them): the figures cut through the findings and outline them")
    detect.set_defaults(run=_detect)

    evaluate = verbs.add_parser("evaluate", help="per-structure ROC/AUROC on the held-out scans",
                                description="Score held-out healthy and all anomalous scans per structure.")
    _inference_options(evaluate)
    evaluate.add_argument("--data", required=True, help="CQ500-style folder with structures.nii.gz")
    evaluate.add_argument("--out", default=None, help="output folder (default RUN/evaluation)")
    add_subjects_option(evaluate)
    add_cache_option(evaluate)
    evaluate.add_argument("--negatives", choices=NEGATIVES, default="all",
                          help="the scans each AUROC tells the positives from: all, every held-out scan without "
                               "that structure's finding (the paper's test set); healthy, only those without any")
    evaluate.add_argument("--by-kind", action="store_true",
                          help="synthetic cohorts: also an AUROC per kind of finding (intraparenchymal or subdural "
                               "bleed; linear, depressed or multiple fracture), from cohort.json")
    evaluate.set_defaults(run=_evaluate)
