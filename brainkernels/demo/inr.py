"""Demo stage: the INR auto-decoder on synthetic neonatal T2, predicting scans at other ages: the
shipped model on a held-out cohort, then a model trained from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainkernels.demo import cohorts, shipped
from brainkernels.demo.report import Section
from brainkernels.demo.settings import DemoSettings
from brainkernels.demo.stages import Stages
from brainkernels.inr.evaluate import COPY, evaluate, test_pairs
from brainkernels.inr.predict import predict
from brainkernels.inr.train import INRConfig, load_trained, train
from brainkernels.runtime import RunFolder
from brainkernels.runtime.loss_curve import FILE as LOSS_CURVE

SHIPPED = "inr-synthetic-dhcp"


def _summary_table(section: Section, results: dict[str, dict[str, Any]]) -> None:
    section.table(("prediction", "PSNR dB", "SSIM", "MAE", "head circumference error σ (cm)", "HC correlation r"),
                  [(name, f"{summary['psnr']:.2f}", f"{summary['ssim']:.3f}", f"{summary['mae']:.4f}",
                    f"{summary['hc_sigma_cm']:.2f}", f"{summary['hc_r']:.2f}") for name, summary in results.items()])


def _sequence(model: str | Path, data: Path, subjects: str, split_seed: int, ages, out: Path, device: str,
              quiet: bool, **fitting) -> tuple[Any, Path]:
    first, _ = test_pairs(data, split_seed, subjects)[0]
    predict(model, first.t2w_path, first.age_weeks, ages, out, device=device, quiet=quiet, **fitting)
    return first, out / "sequence.png"


def _figures(section: Section, first, sequence: Path, evaluation: Path, ages) -> None:
    section.image(sequence, f"{first.subject_id}: the input scan ({first.age_weeks:.1f} weeks) and the model's "
                            f"predictions at {', '.join(f'{age:g}' for age in ages)} weeks")
    section.image(evaluation / "head_circumference.png", "predicted against true head circumference")


def _fitting(card: shipped.ShippedCard) -> dict[str, int]:
    """How the card's evaluation fits a latent: steps and voxels per step."""
    return {key: card["evaluation"][key] for key in ("fit_steps", "fit_voxels")}


def evaluate_shipped(card: shipped.ShippedCard, out: Path, *, device: str = "auto",
                     quiet: bool = False) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the card's metrics measured now, the model's and the copy baseline's summaries) of the shipped
    model on the babies of its evaluation cohort scanned twice."""
    data = shipped.evaluation_data(card, out / "data", quiet)
    results = evaluate(shipped.builtin(card), data, out / "evaluation", device=device, quiet=quiet, subjects="all",
                       **_fitting(card))
    model, copy = results["model"], results[COPY]
    return {"PSNR": model["psnr"], "SSIM": model["ssim"], "PSNR gain over copy input": model["psnr"] - copy["psnr"],
            "SSIM gain over copy input": model["ssim"] - copy["ssim"], "HC correlation r": model["hc_r"]}, results


def _shipped_section(card: shipped.ShippedCard, settings: DemoSettings, out: Path, stages: Stages,
                     quiet: bool) -> Section:
    model, device = shipped.builtin(card), settings.inr.device
    section = Section(f"INR: the shipped model {model} on a held-out cohort")
    with stages("INR shipped model"):
        measured, results = evaluate_shipped(card, out, device=device, quiet=quiet)
        first, sequence = _sequence(model, out / "data", "all", 0, settings.ages, out / "sequence", device, quiet,
                                    **_fitting(card))
    _, cohort = shipped.cohort_of(card, "evaluation")
    fit_steps, fit_voxels = card["evaluation"]["fit_steps"], card["evaluation"]["fit_voxels"]
    section.text(f"{card['summary']}. {card['intended_use']} Evaluated here on the babies scanned twice of "
                 f"{cohort.subjects} synthetic neonates generated now with seed {cohort.seed} (its training cohort "
                 f"had seed {shipped.cohort_of(card, 'training')[1].seed}: no baby below was seen in training). For "
                 f"each, a latent is fitted to the first scan ({fit_steps} steps of {fit_voxels} voxels, network "
                 "fixed) and decoded at the "
                 "age of the last; the copy-input row scores the first scan itself as the prediction (as if the baby "
                 "had not grown), the baseline a model of development must beat.")
    _summary_table(section, results)
    section.table(("metric", "now", "model card"), shipped.metric_rows(card, measured))
    _figures(section, first, sequence, out / "evaluation", settings.ages)
    section.text(shipped.provenance(card, "neonatal_held_out", f" --fit-steps {fit_steps} --fit-voxels {fit_voxels}"))
    return section


def _training_section(settings: DemoSettings, out: Path, stages: Stages, quiet: bool) -> Section:
    config = settings.inr
    section = Section("INR: training from scratch" + ("" if settings.evaluate_trained else " (a short run)"))
    data, run_dir, evaluation = out / "data", out / "run", out / "evaluation"
    with stages("neonatal cohort"):
        cohorts.synthesise("dhcp", settings.neonatal, data, quiet)
    with stages("INR training"):
        train(data, run_dir, config, quiet=quiet)
    variant = ("SSL" if config.ssl else "no SSL") + (f" + SGLA (p={config.sgla:g})" if config.sgla else "")
    section.text(f"A coordinate MLP f(x, age, latent) (width {config.width}, depth {config.depth}, latent "
                 f"{config.latent_size}, {variant}, fused coordinate-MLP kernel) is trained on the "
                 f"{'central axial slices' if config.dims == 2 else 'volumes'} of a synthetic neonatal T2 cohort "
                 f"({settings.neonatal.subjects} babies, {settings.neonatal.shape}^3 voxels, 26-45 weeks; "
                 f"{config.steps} steps).")
    section.image(RunFolder(run_dir).figures / LOSS_CURVE, "training loss (squared intensity error)")
    if settings.evaluate_trained:
        with stages("INR evaluation"):
            results = evaluate(run_dir, data, evaluation, fit_steps=settings.fit_steps, device=config.device,
                               quiet=quiet)
            first, sequence = _sequence(run_dir, data, "held-out", load_trained(run_dir).settings.split_seed,
                                        settings.ages, out / "sequence", config.device, quiet,
                                        fit_steps=settings.fit_steps)
        section.text(f"For each held-out baby, a latent is fitted to the first scan ({settings.fit_steps} steps, "
                     "network fixed) and decoded at the age of the last.")
        _summary_table(section, results)
        _figures(section, first, sequence, evaluation, settings.ages)
    else:
        section.text("This run only shows training at work; `brainkernels demo` without --quick trains longer and "
                     "evaluates the result.")
    section.text("Commands: `" + cohorts.command("dhcp", settings.neonatal, "neonatal") + "`, `brainkernels inr "
                 f"train --data neonatal --out run --dims {config.dims} --width {config.width} --depth {config.depth} "
                 f"--latent-size {config.latent_size} --steps {config.steps}`, `brainkernels inr evaluate --model run "
                 f"--data neonatal --fit-steps {settings.fit_steps}`, `brainkernels inr predict ...`.")
    return section


def run(settings: DemoSettings, out: Path, stages: Stages, quiet: bool) -> list[Section]:
    card = shipped.card(INRConfig, SHIPPED)
    shown = [] if card is None else [_shipped_section(card, settings, out / "inr" / "shipped", stages, quiet)]
    return shown + [_training_section(settings, out / "inr" / "trained", stages, quiet)]
