"""Demo stage: PPR anomaly detection on synthetic CQ500-style CT: the shipped model on a held-out
cohort, then a model trained from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainkernels.data.layouts.cq500 import read_cq500
from brainkernels.demo import cohorts, shipped
from brainkernels.demo.report import Section
from brainkernels.demo.settings import DemoSettings
from brainkernels.demo.stages import Stages
from brainkernels.ppr.evaluate import VS_HEALTHY, detect, evaluate
from brainkernels.ppr.train import PPRConfig, healthy_split, train
from brainkernels.runtime import RunFolder
from brainkernels.runtime.loss_curve import FILE as LOSS_CURVE

SHIPPED = "ppr-synthetic-ct"


def _examples(scans: list) -> list:
    """A scan with a bleed and one with a fracture, to show their anomaly maps."""
    bleeds = [scan for scan in scans if scan.left_bleed or scan.right_bleed]
    fractures = [scan for scan in scans if scan.fracture and scan not in bleeds[:1]]
    return bleeds[:1] + fractures[:1]


def _maps(model: str | Path, data: Path, scans: list, out: Path, device: str, quiet: bool) -> list[Path]:
    # One scan at a time into one folder: the demo made its output folder new or empty, so it may add to it.
    return [detect(model, scan.path, out, device=device, masks=data / "masks", overwrite=True, quiet=quiet)[0]
            for scan in _examples(scans)]


def _auroc_table(section: Section, aurocs: dict[str, dict[str, Any]]) -> None:
    scores = list(aurocs)
    section.table(("structure", *(f"AUROC, {score}" for score in scores)),
                  [(name, *(f"{aurocs[score][name]:.3f}" for score in scores)) for name in aurocs[scores[0]]])


def _map_images(section: Section, maps: list[Path]) -> None:
    for path in maps:
        name = path.name.removesuffix("_anomaly.nii.gz")
        section.image(path.with_name(f"{name}_anomaly.png"),
                      f"{name}: the highest tenth of the anomaly map over the scan, slices through the true finding "
                      "(outlined); neurological convention, the subject's right on the right")


def evaluate_shipped(card: shipped.ShippedCard, out: Path, *, device: str = "auto",
                     quiet: bool = False) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the card's metrics measured now, every AUROC) of the shipped model on its evaluation cohort."""
    data = shipped.evaluation_data(card, out / "data", quiet)
    aurocs = evaluate(shipped.builtin(card), data, out / "evaluation", device=device, quiet=quiet,
                      subjects="all")
    return {f"{structure} AUROC": value for structure, value in aurocs[VS_HEALTHY].items()}, aurocs


def _shipped_section(card: shipped.ShippedCard, out: Path, device: str, stages: Stages, quiet: bool) -> Section:
    model = shipped.builtin(card)
    section = Section(f"PPR: the shipped model {model} on a held-out cohort")
    with stages("PPR shipped model"):
        measured, aurocs = evaluate_shipped(card, out, device=device, quiet=quiet)
        data = out / "data"
        maps = _maps(model, data, read_cq500(data).scans, out / "maps", device, quiet)
    _, cohort = shipped.cohort_of(card, "evaluation")
    section.text(f"{card['summary']}. {card['intended_use']} Evaluated here on {cohort.subjects} synthetic CT scans "
                 f"generated now with seed {cohort.seed} (its training cohort had seed "
                 f"{shipped.cohort_of(card, 'training')[1].seed}: no scan below was seen in training). "
                 "A structure's score is the top of its anomaly map measured against the healthy training scans' maps "
                 "at the same voxels (brainkernels), or its maximum error (the paper).")
    _auroc_table(section, aurocs)
    section.table(("metric", "now", "model card"), shipped.metric_rows(card, measured))
    section.image(out / "evaluation" / "roc.png", "ROC per structure over the held-out scans")
    _map_images(section, maps)
    section.text(shipped.provenance(card, "ct_held_out"))
    return section


def _training_section(settings: DemoSettings, out: Path, stages: Stages, quiet: bool) -> Section:
    config = settings.ppr
    section = Section("PPR: training from scratch" + ("" if settings.evaluate_trained else " (a short run)"))
    data, run_dir = out / "data", out / "run"
    with stages("CT cohort"):
        cohorts.synthesise("cq500", settings.ct, data, quiet)
    with stages("PPR training"):
        train(data, run_dir, config, quiet=quiet)
    section.text(f"A network of size m={config.network_size} learns where a {config.patch}^3 patch of a healthy head "
                 f"CT sits ({config.steps} steps of {config.patches_per_step} patches, healthy training scans only) on "
                 f"{settings.ct.subjects} synthetic CT scans of {settings.ct.shape}^3 voxels.")
    section.image(RunFolder(run_dir).figures / LOSS_CURVE, "training loss (mean position error of the patches)")
    if settings.evaluate_trained:
        with stages("PPR evaluation"):
            aurocs = evaluate(run_dir, data, out / "evaluation", device=config.device, quiet=quiet)
            _, held_out = healthy_split(read_cq500(data).scans, config.split_seed)
            maps = _maps(run_dir, data, held_out, out / "maps", config.device, quiet)
        _auroc_table(section, aurocs)
        section.image(out / "evaluation" / "roc.png", "ROC per structure over the held-out scans")
        _map_images(section, maps)
    else:
        section.text("This run only shows training at work: PPR needs long training before lesions stand out (the "
                     "paper trains each model for about 22 hours on a GPU; the shipped model above, "
                     "about two hours on one CPU core). `brainkernels demo` without --quick trains longer and "
                     "evaluates the result.")
    section.text("Commands: `" + cohorts.command("cq500", settings.ct, "ct") + "`, `brainkernels ppr train "
                 f"--data ct --out run --network-size {config.network_size} --patch {config.patch} --patches-per-step "
                 f"{config.patches_per_step} --lr {config.lr:g} --steps {config.steps}`, `brainkernels ppr "
                 "evaluate --model run --data ct`, `brainkernels ppr detect --model run --input ct/scans --masks "
                 "ct/masks --out maps`.")
    return section


def run(settings: DemoSettings, out: Path, stages: Stages, quiet: bool) -> list[Section]:
    card = shipped.card(PPRConfig, SHIPPED)
    device = settings.ppr.device
    shown = [] if card is None else [_shipped_section(card, out / "ppr" / "shipped", device, stages, quiet)]
    return shown + [_training_section(settings, out / "ppr" / "trained", stages, quiet)]
