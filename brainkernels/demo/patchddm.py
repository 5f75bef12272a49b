"""Demo stage: PatchDDM tumour segmentation with an ensemble on the synthetic BraTS-style cohort."""

from __future__ import annotations

import math
from pathlib import Path

from brainkernels.demo import cohorts
from brainkernels.demo.report import Section
from brainkernels.demo.settings import DemoSettings
from brainkernels.demo.stages import Stages
from brainkernels.patchddm.evaluate import evaluate
from brainkernels.patchddm.train import train


def run(settings: DemoSettings, out: Path, stages: Stages, quiet: bool) -> Section:
    section = Section("PatchDDM: tumour segmentation with a 3D diffusion model")
    data, run_dir, evaluation = out / "data" / "mr", out / "patchddm" / "run", out / "patchddm" / "evaluation"
    config = settings.patchddm
    with stages("MR cohort"):
        cohorts.synthesise("brats", settings.mr, data, quiet)
    with stages("PatchDDM training"):
        train(data, run_dir, config, quiet=quiet)
    with stages("PatchDDM evaluation"):
        summary = evaluate(run_dir, data, evaluation, steps=[settings.sampling_steps], ensemble=list(settings.ensemble),
                           device=config.device, quiet=quiet)

    channels = ",".join(str(m) for m in config.channel_mult)
    section.text(f"A diffusion U-Net with averaged skips ({config.channels} channels x ({channels}), fused GroupNorm "
                 f"+ SiLU + convolution blocks) is trained on coordinate-encoded {config.patch}^3 patches "
                 f"({config.steps} steps, batch {config.batch_size}) and samples the whole volume: "
                 f"{settings.sampling_steps} DDIM steps per member; the ensemble's mean is the segmentation and its "
                 f"variance the uncertainty. Cohort: {settings.mr.subjects} synthetic four-sequence MR subjects of "
                 f"{settings.mr.shape}^3 voxels with tumours (labels 1, 2, 4; the whole tumour is segmented).")
    section.table(("ensemble members", "test subjects", "Dice (mean ± std)", "HD95 mm (mean ± std)"),
                  [(row["ensemble"], row["subjects"], f"{row['dice_mean']:.3f} ± {row['dice_std']:.3f}",
                    f"{row['hd95_mean_mm']:.1f} ± {row['hd95_std_mm']:.1f}" if math.isfinite(row["hd95_mean_mm"])
                    else str(row["hd95_mean_mm"])) for row in summary])
    section.image(evaluation / "dice_vs_ensemble.png", "Dice and HD95 against the ensemble size")
    subject = sorted((evaluation / "figures").glob("*_segmentation.png"))[0].name.removesuffix("_segmentation.png")
    section.image(evaluation / "figures" / f"{subject}_segmentation.png",
                  f"{subject}: mean tumour probability of the ensemble, the segmentation's and the true tumour's "
                  "outlines, slices through the true tumour (neurological convention)")
    section.image(evaluation / "figures" / f"{subject}_uncertainty.png",
                  f"{subject}: variance over the ensemble members (the uncertainty)")
    section.text("Commands: `" + cohorts.command("brats", settings.mr, "mr") + "`, `brainkernels patchddm train "
                 f"--data mr --out run --channels {config.channels} --channel-mult {channels} --patch {config.patch} "
                 f"--steps {config.steps} --lr {config.lr:g} --batch-size {config.batch_size}`, `brainkernels "
                 f"patchddm evaluate --model run --data mr --steps {settings.sampling_steps} --ensemble "
                 f"{','.join(str(size) for size in settings.ensemble)}`.")
    return section
