"""Demo stage: PatchDDM tumour segmentation with an ensemble on synthetic BraTS-style MR: the shipped
model on a held-out cohort, then a model trained from scratch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from brainkernels.demo import cohorts, shipped
from brainkernels.demo.report import Section
from brainkernels.demo.settings import DemoSettings
from brainkernels.demo.stages import Stages
from brainkernels.patchddm.evaluate import evaluate
from brainkernels.patchddm.train import PatchDDMConfig, train
from brainkernels.runtime import RunFolder
from brainkernels.runtime.loss_curve import FILE as LOSS_CURVE

SHIPPED = "patchddm-synthetic-brats"


def _members(count: int) -> str:
    return f"{count} member" + ("" if count == 1 else "s")


def _summary_table(section: Section, summary: list[dict]) -> None:
    section.table(("ensemble members", "subjects", "Dice (mean ± std)", "HD95 mm (mean ± std)"),
                  [(row["ensemble"], row["subjects"], f"{row['dice_mean']:.3f} ± {row['dice_std']:.3f}",
                    f"{row['hd95_mean_mm']:.1f} ± {row['hd95_std_mm']:.1f}" if math.isfinite(row["hd95_mean_mm"])
                    else str(row["hd95_mean_mm"])) for row in summary])


def _figures(section: Section, evaluation: Path) -> None:
    section.image(evaluation / "dice_vs_ensemble.png", "Dice and HD95 against the ensemble size")
    subject = sorted((evaluation / "figures").glob("*_segmentation.png"))[0].name.removesuffix("_segmentation.png")
    section.image(evaluation / "figures" / f"{subject}_segmentation.png",
                  f"{subject}: mean tumour probability of the ensemble, the segmentation's and the true tumour's "
                  "outlines, slices through the true tumour (neurological convention)")
    section.image(evaluation / "figures" / f"{subject}_uncertainty.png",
                  f"{subject}: variance over the ensemble members (the uncertainty)")


def evaluate_shipped(card: shipped.ShippedCard, out: Path, *, device: str = "auto",
                     quiet: bool = False) -> tuple[dict[str, Any], list[dict]]:
    """(the card's metrics measured now, the summary rows) of the shipped model on its evaluation
    cohort, with the card's sampling steps and ensemble sizes."""
    data = shipped.evaluation_data(card, out / "data", quiet)
    options = card["evaluation"]
    summary = evaluate(shipped.builtin(card), data, out / "evaluation", steps=[options["steps"]],
                       ensemble=list(options["ensemble"]), device=device, quiet=quiet, subjects="all")
    return {f"Dice, {_members(row['ensemble'])}": row["dice_mean"] for row in summary}, summary


def _shipped_section(card: shipped.ShippedCard, out: Path, device: str, stages: Stages, quiet: bool) -> Section:
    model = shipped.builtin(card)
    section = Section(f"PatchDDM: the shipped model {model} on a held-out cohort")
    with stages("PatchDDM shipped model"):
        measured, summary = evaluate_shipped(card, out, device=device, quiet=quiet)
    _, cohort = shipped.cohort_of(card, "evaluation")
    options = card["evaluation"]
    section.text(f"{card['summary']}. {card['intended_use']} Evaluated here on {cohort.subjects} synthetic MR "
                 f"subjects generated now with seed {cohort.seed} (its training cohort had seed "
                 f"{shipped.cohort_of(card, 'training')[1].seed}: no subject below was seen in training), "
                 f"{options['steps']} DDIM steps per member; the ensemble's mean is the segmentation and its variance "
                 "the uncertainty.")
    _summary_table(section, summary)
    section.table(("metric", "now", "model card"), shipped.metric_rows(card, measured))
    _figures(section, out / "evaluation")
    section.text(shipped.provenance(card, "mr_held_out", f" --steps {options['steps']} --ensemble "
                                                         f"{','.join(str(size) for size in options['ensemble'])}"))
    return section


def _training_section(settings: DemoSettings, out: Path, stages: Stages, quiet: bool) -> Section:
    config = settings.patchddm
    section = Section("PatchDDM: training from scratch" + ("" if settings.evaluate_trained else " (a short run)"))
    data, run_dir, evaluation = out / "data", out / "run", out / "evaluation"
    with stages("MR cohort"):
        cohorts.synthesise("brats", settings.mr, data, quiet)
    with stages("PatchDDM training"):
        train(data, run_dir, config, quiet=quiet)
    channels = ",".join(str(m) for m in config.channel_mult)
    section.text(f"A diffusion U-Net with averaged skips ({config.channels} channels x ({channels}), fused GroupNorm "
                 f"+ SiLU + convolution blocks) is trained on coordinate-encoded {config.patch}^3 patches "
                 f"({config.steps} steps, batch {config.batch_size}) of {settings.mr.subjects} synthetic "
                 f"four-sequence MR subjects of {settings.mr.shape}^3 voxels with tumours (labels 1, 2, 4; the whole "
                 "tumour is segmented).")
    section.image(RunFolder(run_dir).figures / LOSS_CURVE, "training loss (noise-prediction error)")
    if settings.evaluate_trained:
        with stages("PatchDDM evaluation"):
            summary = evaluate(run_dir, data, evaluation, steps=[settings.sampling_steps],
                               ensemble=list(settings.ensemble), device=config.device, quiet=quiet)
        _summary_table(section, summary)
        _figures(section, evaluation)
    else:
        section.text("This run only shows training at work; `brainkernels demo` without --quick trains longer and "
                     "evaluates the result.")
    section.text("Commands: `" + cohorts.command("brats", settings.mr, "mr") + "`, `brainkernels patchddm train "
                 f"--data mr --out run --channels {config.channels} --channel-mult {channels} --patch {config.patch} "
                 f"--steps {config.steps} --lr {config.lr:g} --batch-size {config.batch_size}`, `brainkernels "
                 f"patchddm evaluate --model run --data mr --steps {settings.sampling_steps} --ensemble "
                 f"{','.join(str(size) for size in settings.ensemble)}`.")
    return section


def run(settings: DemoSettings, out: Path, stages: Stages, quiet: bool) -> list[Section]:
    card = shipped.card(PatchDDMConfig, SHIPPED)
    device = settings.patchddm.device
    shown = [] if card is None else [_shipped_section(card, out / "patchddm" / "shipped", device, stages, quiet)]
    return shown + [_training_section(settings, out / "patchddm" / "trained", stages, quiet)]
