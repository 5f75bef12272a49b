"""`brainkernels inr train|predict|atlas|evaluate|ablation` and `inr baseline train|tune|evaluate` (DDM+GG)."""

from __future__ import annotations

import argparse

from brainkernels.options import at_least
from brainkernels.runtime import config
from brainkernels.runtime.command import (
    add_cache_option,
    add_export_verb,
    add_model_option,
    add_subjects_option,
    add_train_verb,
    add_workers_option,
)


def _age(text: str) -> float:
    """A postmenstrual age in weeks, refused when implausible (a unit error, say)."""
    from brainkernels.data.layouts.dhcp import PLAUSIBLE_AGE_WEEKS, plausible_age

    try:
        age = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an age must be a number of weeks; got {text!r}") from None
    if not plausible_age(age):
        low, high = PLAUSIBLE_AGE_WEEKS
        raise argparse.ArgumentTypeError(f"an age must be a postmenstrual age, {low:g} to {high:g} weeks; got {text}")
    return age


def _ages(text: str) -> list[float]:
    ages = [_age(age) for age in text.split(",") if age.strip()]
    if not ages:
        raise argparse.ArgumentTypeError("give at least one age in weeks, e.g. 28,32,36")
    return ages


def _predict(arguments: argparse.Namespace) -> int:
    from brainkernels.errors import BrainkernelsError
    from brainkernels.inr.predict import predict

    ages = arguments.ages or ([arguments.age_out] if arguments.age_out is not None else None)
    if ages is None:
        raise BrainkernelsError("give --age-out AGE or --ages AGE,AGE,...")
    written = predict(arguments.model, arguments.input, arguments.age_in, ages, arguments.out,
                      fit_steps=arguments.fit_steps, fit_voxels=arguments.fit_voxels, device=arguments.device,
                      overwrite=arguments.overwrite, quiet=arguments.quiet)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def _atlas(arguments: argparse.Namespace) -> int:
    from brainkernels.inr.predict import atlas

    written = atlas(arguments.model, arguments.ages, arguments.out, data=arguments.data, device=arguments.device,
                    overwrite=arguments.overwrite)
    print(f"wrote {len(written)} files to {arguments.out}")
    return 0


def _evaluate(arguments: argparse.Namespace) -> int:
    from brainkernels.inr.evaluate import evaluate, format_table

    summary = evaluate(arguments.model, arguments.data, arguments.out, fit_steps=arguments.fit_steps,
                       fit_voxels=arguments.fit_voxels, device=arguments.device, workers=arguments.workers,
                       quiet=arguments.quiet, subjects=arguments.subjects, min_gap=arguments.min_gap,
                       cache=arguments.cache)
    print(format_table(summary))
    return 0


def _ablation(arguments: argparse.Namespace) -> int:
    from brainkernels.inr.evaluate import ablation, format_table
    from brainkernels.inr.train import INRConfig

    settings = config.config_from_arguments(INRConfig, arguments)
    results = ablation(arguments.data, arguments.out, settings, fit_steps=arguments.fit_steps,
                       fit_voxels=arguments.fit_voxels, test_data=arguments.test_data, min_gap=arguments.min_gap,
                       resume=arguments.resume, overwrite=arguments.overwrite, quiet=arguments.quiet)
    print(format_table(results))
    print(f"table: {arguments.out}/ablation.csv, plot: {arguments.out}/head_circumference.png")
    return 0


def _numbers(kind: type, option: str):
    def parse(text: str) -> list:
        try:
            values = [kind(value) for value in text.split(",") if value.strip()]
        except ValueError:
            values = []
        if not values or any(not (value >= 0 and value != float("inf")) for value in values):
            raise argparse.ArgumentTypeError(f"{option} takes finite numbers, 0 or more, separated by commas; "
                                             f"got {text!r}")
        return values

    return parse


def _baseline_evaluate(arguments: argparse.Namespace) -> int:
    from brainkernels.inr.baseline import evaluate
    from brainkernels.inr.evaluate import format_table

    summary = evaluate(arguments.model, arguments.data, arguments.out, noise_steps=arguments.noise_steps,
                       guidance_scale=arguments.guidance_scale, stride=arguments.stride, seed=arguments.seed,
                       device=arguments.device,
                       workers=arguments.workers, quiet=arguments.quiet, subjects=arguments.subjects,
                       min_gap=arguments.min_gap, cache=arguments.cache)
    print(format_table(summary))
    return 0


def _baseline_tune(arguments: argparse.Namespace) -> int:
    from brainkernels.inr.baseline import tune
    from brainkernels.inr.evaluate import SUMMARY_KEYS

    results = tune(arguments.model, arguments.data, arguments.noise_steps, arguments.guidance_scale,
                   pairs=arguments.pairs, stride=arguments.stride, seed=arguments.seed, device=arguments.device,
                   quiet=arguments.quiet)
    print(f"{'L':>6}{'c':>12}" + "".join(f"{key:>13}" for key in SUMMARY_KEYS))
    for row in results:
        print(f"{row['noise_steps']:>6}{row['guidance_scale']:>12.4g}" + "".join(
            f"{row[key]:>13.4f}" for key in SUMMARY_KEYS))
    print(f"copy input on these pairs: PSNR {results[0]['psnr_copy']:.4f}, SSIM {results[0]['ssim_copy']:.4f}")
    print(f"table: {arguments.model}/tuning.csv (best PSNR first)")
    return 0


def _register_baseline(verbs) -> None:
    from brainkernels.inr.baseline import PAPER_GUIDANCE_SCALE, PAPER_NOISE_STEPS, DDMGGConfig, train

    baseline = verbs.add_parser("baseline", help="DDM+GG, the paper's 2D baseline: diffusion with age guidance",
                                description="A 2D denoising diffusion model of central axial slices, conditioned on "
                                "the input slice, guided toward the target age by the gradient of an age regressor "
                                "(the INR paper's DDM+GG baseline).")
    steps = baseline.add_subparsers(dest="baseline_verb", required=True, metavar="VERB")
    add_train_verb(steps, DDMGGConfig, train, help="train the denoiser and the age regressor",
                   description="Train both networks on the central axial slices of the training scans (the INR's "
                   "held-out subjects excluded).", data_help="dHCP/BIDS folder (participants.tsv, sub-*/)",
                   summary=lambda settings, run: f"trained DDM+GG ({settings.steps} steps); run folder: {run}")

    def sampling_options(parser: argparse.ArgumentParser, many: bool) -> None:
        parser.add_argument("--model", required=True, metavar="RUN", help="run folder of `inr baseline train`")
        parser.add_argument("--data", required=True, help="dHCP-layout folder")
        parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
        parser.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
        parser.add_argument("--stride", type=at_least(1, "--stride"), default=1,
                            help="denoise every STRIDE-th of the L steps (respaced; default 1: all, as the paper)")
        parser.add_argument("--quiet", action="store_true", help="no progress bars")
        if many:
            parser.add_argument("--noise-steps", type=_numbers(int, "--noise-steps"), required=True,
                                help="noising/denoising steps L to try, e.g. 200,400,600")
            parser.add_argument("--guidance-scale", type=_numbers(float, "--guidance-scale"), required=True,
                                help="gradient scales c to try, e.g. 0,1e3,1e4")
        else:
            parser.add_argument("--noise-steps", type=at_least(1, "--noise-steps"), default=PAPER_NOISE_STEPS,
                                help=f"noising/denoising steps L of the T diffusion steps (default the paper's "
                                     f"{PAPER_NOISE_STEPS}; tune it with `inr baseline tune`)")
            parser.add_argument("--guidance-scale", type=float, default=PAPER_GUIDANCE_SCALE,
                                help=f"gradient scale c (default the paper's {PAPER_GUIDANCE_SCALE:g})")

    tune = steps.add_parser("tune", help="sweep L and c on training pairs",
                            description="Score every (L, c) on the first --pairs pairs of training subjects scanned "
                            "twice (never the held-out ones); writes RUN/tuning.csv.")
    sampling_options(tune, many=True)
    tune.add_argument("--pairs", type=at_least(1, "--pairs"), default=5, help="training pairs to score (default 5)")
    tune.set_defaults(run=_baseline_tune)

    evaluate = steps.add_parser("evaluate", help="predict held-out second sessions: PSNR, SSIM, MAE, HC",
                                description="`inr evaluate` for the baseline: the same pairs and metrics, the "
                                "input slice noised to L and denoised with age guidance.")
    sampling_options(evaluate, many=False)
    evaluate.add_argument("--out", default=None, help="output folder (default RUN/evaluation)")
    add_workers_option(evaluate)
    add_subjects_option(evaluate)
    _min_gap_option(evaluate)
    add_cache_option(evaluate)
    evaluate.set_defaults(run=_baseline_evaluate)


def _min_gap(text: str) -> float:
    try:
        weeks = float(text)
    except ValueError:
        weeks = float("nan")
    if not 0 <= weeks < float("inf"):
        raise argparse.ArgumentTypeError(f"--min-gap takes a number of weeks, 0 or more; got {text!r}")
    return weeks


def _min_gap_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-gap", type=_min_gap, default=0.0, metavar="WEEKS",
                        help="evaluate only the pairs whose sessions are at least WEEKS apart (default 0: all)")


def _fitting_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fit-steps", type=at_least(1, "--fit-steps"), default=None,
                        help="latent-fitting steps (default: the paper's 2000 in 2D, 1000 in 3D)")
    parser.add_argument("--fit-voxels", type=at_least(1, "--fit-voxels"), default=None,
                        help="voxels sampled per fitting step (default: the whole grid)")


def _inference_options(parser: argparse.ArgumentParser) -> None:
    from brainkernels.inr.train import INRConfig

    add_model_option(parser, INRConfig, "inr")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def register_command(commands) -> None:
    from brainkernels.inr.train import METHOD, RUN_FILES, INRConfig, train

    inr = commands.add_parser("inr", help="INR auto-decoder: neonatal brain development across age",
                              description="Implicit neural representation of neonatal brain development "
                              "(Bieder et al., PRIME 2024) on the fused coordinate MLP.")
    verbs = inr.add_subparsers(dest="verb", required=True, metavar="VERB")

    add_train_verb(verbs, INRConfig, train, help="train on a dHCP-layout cohort",
                   description="Train the network and one latent per subject (SSL) or scan, holding out a fifth "
                   "of the subjects with two sessions for evaluation.",
                   data_help="dHCP/BIDS folder (participants.tsv, sub-*/)",
                   summary=lambda settings, run: f"trained the INR ({settings.dims}D, ssl={settings.ssl}, "
                                                 f"sgla={settings.sgla}); run folder: {run}")
    add_export_verb(verbs, method=METHOD, method_files=RUN_FILES)

    predict = verbs.add_parser("predict", help="predict a scan at other ages",
                               description="Fit a latent to a scan and write it at other ages (with the input's "
                               "affine) and the reconstruction at the input age.")
    _inference_options(predict)
    predict.add_argument("--input", required=True, help="T2-weighted scan (.nii/.nii.gz) on the training grid")
    predict.add_argument("--age-in", required=True, type=_age, help="postmenstrual age of the scan (weeks)")
    predict.add_argument("--age-out", type=_age, default=None, help="age to predict (weeks)")
    predict.add_argument("--ages", type=_ages, default=None, help="ages to predict, e.g. 28,32,36,40,44 (a sequence "
                         "and a PNG montage in the --out folder)")
    predict.add_argument("--out", required=True, help="output .nii.gz (one age) or folder (new or empty)")
    predict.add_argument("--overwrite", action="store_true", help="replace the outputs of the same names")
    predict.add_argument("--quiet", action="store_true", help="no progress bars")
    _fitting_options(predict)
    predict.set_defaults(run=_predict)

    atlas = verbs.add_parser("atlas", help="the average brain at given ages (zero and mean latents)",
                             description="Decode the zero latent and the mean training latent at each age.")
    _inference_options(atlas)
    atlas.add_argument("--ages", type=_ages, default=_ages("28,32,36,40,44"), help="ages in weeks (default "
                       "28,32,36,40,44)")
    atlas.add_argument("--out", required=True, help="output folder (new or empty)")
    atlas.add_argument("--data", default=None, metavar="FOLDER",
                       help="a dHCP-layout cohort on the model's grid (e.g. the training cohort): also plot the "
                            "average brains' head circumference against its scans' (head_circumference.png/.csv)")
    atlas.add_argument("--overwrite", action="store_true", help="replace the outputs of the same names in --out")
    atlas.set_defaults(run=_atlas)

    evaluate = verbs.add_parser("evaluate", help="predict held-out second sessions: PSNR, SSIM, MAE, HC",
                                description="For each held-out subject with two sessions, fit on the first and "
                                "predict the last; image metrics and head circumference against the truth.")
    _inference_options(evaluate)
    evaluate.add_argument("--data", required=True, help="the dHCP-layout folder the run was trained on")
    evaluate.add_argument("--out", default=None, help="output folder (default RUN/evaluation)")
    add_workers_option(evaluate)
    add_subjects_option(evaluate)
    _min_gap_option(evaluate)
    add_cache_option(evaluate)
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    _fitting_options(evaluate)
    evaluate.set_defaults(run=_evaluate)

    ablation = verbs.add_parser("ablation", help="train and evaluate none / SGLA / SSL / both",
                                description="Train the four variants (SSL off/on, SGLA off/on) with the given "
                                "configuration in OUT/<variant>, evaluate each, and write OUT/ablation.csv and "
                                "OUT/head_circumference.png.")
    ablation.add_argument("--data", required=True, help="dHCP/BIDS folder")
    ablation.add_argument("--out", required=True, help="output folder")
    ablation.add_argument("--test-data", default=None, metavar="FOLDER",
                          help="evaluate on every subject scanned twice in this dHCP/BIDS folder (a cohort the "
                               "variants never saw) instead of the held-out subjects of --data")
    _min_gap_option(ablation)
    ablation.add_argument("--resume", action="store_true",
                          help="continue each variant's training in OUT/<variant> from its latest checkpoint (a "
                               "finished one is only evaluated; the variants can be trained apart with `inr train`)")
    ablation.add_argument("--overwrite", action="store_true", help="replace the runs of an earlier ablation in --out")
    ablation.add_argument("--quiet", action="store_true", help="no progress bars")
    _fitting_options(ablation)
    config.add_arguments(ablation, INRConfig)
    ablation.set_defaults(run=_ablation)

    _register_baseline(verbs)
