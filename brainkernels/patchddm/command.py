"""`brainkernels patchddm train|segment|evaluate`."""

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


def _int_list(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers of at least 1, got {text!r}")
    return values


def _segment(arguments: argparse.Namespace) -> int:
    from brainkernels.patchddm.evaluate import segment

    written = segment(arguments.model, arguments.input, arguments.out, steps=arguments.steps,
                      ensemble=arguments.ensemble, seed=arguments.seed, precision=arguments.precision,
                      device=arguments.device, workers=arguments.workers, overwrite=arguments.overwrite,
                      quiet=arguments.quiet)
    print(f"wrote {len(written)} segmentation(s) (mask, probability, variance, PNG) to {arguments.out}")
    return 0


def _evaluate(arguments: argparse.Namespace) -> int:
    from brainkernels.patchddm.evaluate import evaluate

    summary = evaluate(arguments.model, arguments.data, arguments.out, steps=arguments.steps,
                       ensemble=arguments.ensemble, seed=arguments.seed, precision=arguments.precision,
                       device=arguments.device, workers=arguments.workers, quiet=arguments.quiet,
                       subjects=arguments.subjects, cache=arguments.cache)
    print(f"{'steps':>5} {'ensemble':>8} {'Dice':>15} {'HD95 (mm)':>17}")
    for row in summary:
        print(f"{row['steps']:>5} {row['ensemble']:>8} {row['dice_mean']:>8.3f} ± {row['dice_std']:.3f} "
              f"{row['hd95_mean_mm']:>9.2f} ± {row['hd95_std_mm']:.2f}")
    return 0


def _sampling_options(parser: argparse.ArgumentParser, *, lists: bool) -> None:
    from brainkernels.patchddm.train import PatchDDMConfig

    add_model_option(parser, PatchDDMConfig, "patchddm")
    parser.add_argument("--steps", type=_int_list if lists else at_least(1, "--steps"), default=[20] if lists else 20,
                        help="DDIM sampling steps" + (" (comma-separated list)" if lists else ""))
    parser.add_argument("--ensemble", type=_int_list if lists else at_least(1, "--ensemble"),
                        default=[1, 3, 5] if lists else 5,
                        help="ensemble size(s)" + (" (comma-separated list)" if lists else ""))
    parser.add_argument("--seed", type=int, default=0, help="member k starts from the noise of seed + k")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="dtype the network samples in (bf16: about half the memory, on a GPU)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_workers_option(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def register_command(commands) -> None:
    patchddm = commands.add_parser("patchddm", help="diffusion-model tumour segmentation in MR",
                                   description="PatchDDM (Bieder et al., MIDL 2023): a 3D diffusion U-Net trained on "
                                               "coordinate-encoded patches, sampled on the whole volume.")
    verbs = patchddm.add_subparsers(dest="verb", required=True, metavar="VERB")

    from brainkernels.patchddm.train import METHOD, RUN_FILES, PatchDDMConfig, train

    add_train_verb(verbs, PatchDDMConfig, train, help="train on the training split of a BraTS-layout cohort",
                   description="Train PatchDDM (--mode patch) or the FullRes / HalfRes baselines.",
                   data_help="BraTS-layout folder (one folder per subject)",
                   summary=lambda settings, run: f"trained PatchDDM ({settings.mode} mode); run folder: {run}")
    add_export_verb(verbs, method=METHOD, method_files=RUN_FILES)

    segment = verbs.add_parser("segment", help="tumour masks with uncertainty (NIfTI + PNG)",
                               description="Sample an ensemble per subject: mask, mean probability, variance.")
    _sampling_options(segment, lists=False)
    segment.add_argument("--input", required=True, help="a BraTS subject folder or a folder of them")
    segment.add_argument("--out", required=True, help="output folder (new or empty)")
    segment.add_argument("--overwrite", action="store_true", help="replace the outputs of the same names in --out")
    segment.set_defaults(run=_segment)

    evaluate = verbs.add_parser("evaluate", help="Dice and HD95 on the test split",
                                description="Dice and HD95 per test subject, per sampling steps and ensemble size.")
    _sampling_options(evaluate, lists=True)
    evaluate.add_argument("--data", required=True, help="the BraTS-layout cohort the run was trained on")
    evaluate.add_argument("--out", default=None, help="output folder (default RUN/evaluation)")
    add_subjects_option(evaluate)
    add_cache_option(evaluate)
    evaluate.set_defaults(run=_evaluate)
