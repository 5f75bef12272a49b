"""Demo stage: PPR anomaly detection on the synthetic CQ500-style CT cohort."""

from __future__ import annotations

from pathlib import Path

from brainkernels.data.layouts.cq500 import read_cq500
from brainkernels.demo import cohorts
from brainkernels.demo.report import Section
from brainkernels.demo.settings import DemoSettings
from brainkernels.demo.stages import Stages
from brainkernels.ppr.evaluate import detect, evaluate
from brainkernels.ppr.train import healthy_split, train


def _examples(data: Path, split_seed: int) -> list:
    """A held-out scan with a bleed and one with a fracture, to show their anomaly maps."""
    _, held_out = healthy_split(read_cq500(data).scans, split_seed)
    bleeds = [scan for scan in held_out if scan.left_bleed or scan.right_bleed]
    fractures = [scan for scan in held_out if scan.fracture and scan not in bleeds[:1]]
    return bleeds[:1] + fractures[:1]


def run(settings: DemoSettings, out: Path, stages: Stages, quiet: bool) -> Section:
    section = Section("PPR: unsupervised anomaly detection in head CT")
    data, run_dir = out / "data" / "ct", out / "ppr" / "run"
    config = settings.ppr
    with stages("CT cohort"):
        cohorts.synthesise("cq500", settings.ct, data, quiet)
    with stages("PPR training"):
        train(data, run_dir, config, quiet=quiet)
    with stages("PPR evaluation"):
        aurocs = evaluate(run_dir, data, out / "ppr" / "evaluation", device=config.device, quiet=quiet)
    with stages("PPR anomaly maps"):
        # One scan at a time into one folder: the demo made ``out`` new or empty, so it may add to it.
        maps = [detect(run_dir, scan.path, out / "ppr" / "maps", device=config.device, masks=data / "masks",
                       overwrite=True, quiet=quiet)[0]
                for scan in _examples(data, config.split_seed)]

    section.text(f"A network of size m={config.network_size} learns where a {config.patch}^3 patch of a healthy head CT "
                 f"sits ({config.steps} steps of {config.patches_per_step} patches, healthy training scans only). "
                 "On a held-out scan the position error at every voxel, computed exactly and densely by the "
                 "network's fully convolutional rewrite, is the anomaly map. A structure's score is its maximum "
                 "error (the paper), or the top of its error measured against the healthy training scans' error "
                 "at the same voxels (brainkernels). Cohort: "
                 + f"{settings.ct.subjects} synthetic CT scans of {settings.ct.shape}^3 voxels.")
    scores = list(aurocs)
    section.table(("structure", *(f"AUROC, {score}" for score in scores)),
                  [(name, *(f"{aurocs[score][name]:.3f}" for score in scores)) for name in aurocs[scores[0]]])
    section.image(out / "ppr" / "evaluation" / "roc.png", "ROC per structure over the held-out scans")
    for path in maps:
        name = path.name.removesuffix("_anomaly.nii.gz")
        section.image(path.with_name(f"{name}_anomaly.png"),
                      f"{name}: the highest tenth of the anomaly map over the scan, slices through the true finding "
                      "(outlined); neurological convention, the subject's right on the right")
    section.text("PPR needs long training before lesions stand out: the paper trains each model for about "
                 "22 hours on a GPU. Runs this short show the "
                 "pipeline, not a useful detector (on a 96^3 cohort, 36000 steps on one CPU core, 2.7 hours, "
                 "reached AUROC 0.82 and 0.85 for left and right bleeds against healthy scans on 48 held-out "
                 "scans; see docs/ppr.md).")
    section.text("Commands: `" + cohorts.command("cq500", settings.ct, "ct") + "`, `brainkernels ppr train "
                 f"--data ct --out run --network-size {config.network_size} --patch {config.patch} --patches-per-step "
                 f"{config.patches_per_step} --lr {config.lr:g} --steps {config.steps}`, `brainkernels ppr "
                 "evaluate --model run --data ct`, `brainkernels ppr detect --model run --input ct/scans --masks ct/masks --out maps`.")
    return section
