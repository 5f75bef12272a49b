"""Demo stage: the INR auto-decoder on the synthetic neonatal cohort, predicting scans at other ages."""

from __future__ import annotations

from pathlib import Path

from brainkernels.demo import cohorts
from brainkernels.demo.report import Section
from brainkernels.demo.settings import DemoSettings
from brainkernels.demo.stages import Stages
from brainkernels.inr.evaluate import evaluate, test_pairs
from brainkernels.inr.predict import predict
from brainkernels.inr.train import train


def run(settings: DemoSettings, out: Path, stages: Stages, quiet: bool) -> Section:
    section = Section("INR: neonatal brain development at any age")
    data, run_dir, evaluation = out / "data" / "neonatal", out / "inr" / "run", out / "inr" / "evaluation"
    config = settings.inr
    with stages("neonatal cohort"):
        cohorts.synthesise("dhcp", settings.neonatal, data, quiet)
    with stages("INR training"):
        train(data, run_dir, config, quiet=quiet)
    with stages("INR evaluation"):
        summary = evaluate(run_dir, data, evaluation, fit_steps=settings.fit_steps, device=config.device, quiet=quiet)
    first, _ = test_pairs(data, config.split_seed)[0]
    with stages("INR age sequence"):
        predict(run_dir, first.t2w_path, first.age_weeks, settings.ages, out / "inr" / "sequence",
                fit_steps=settings.fit_steps, device=config.device, quiet=quiet)

    variant = ("SSL" if config.ssl else "no SSL") + (f" + SGLA (p={config.sgla:g})" if config.sgla else "")
    section.text(f"A coordinate MLP f(x, age, latent) (width {config.width}, depth {config.depth}, latent "
                 f"{config.latent_size}, {variant}, fused coordinate-MLP kernel) is trained on the "
                 f"{'central axial slices' if config.dims == 2 else 'volumes'} of a synthetic neonatal T2 cohort "
                 f"({settings.neonatal.subjects} babies, {settings.neonatal.shape}^3 voxels, 26-45 weeks; "
                 f"{config.steps} steps). For each held-out baby, a latent is fitted to the first scan "
                 f"({settings.fit_steps} steps, network fixed) and decoded at the age of the last scan.")
    section.table(("PSNR dB", "SSIM", "MAE", "head circumference error σ (cm)", "HC correlation r"),
                  [(f"{summary['psnr']:.2f}", f"{summary['ssim']:.3f}", f"{summary['mae']:.4f}",
                    f"{summary['hc_sigma_cm']:.2f}", f"{summary['hc_r']:.2f}")])
    section.image(out / "inr" / "sequence" / "sequence.png",
                  f"{first.subject_id}: the input scan ({first.age_weeks:.1f} weeks) and the model's predictions "
                  f"at {', '.join(f'{age:g}' for age in settings.ages)} weeks")
    section.image(evaluation / "head_circumference.png", "predicted against true head circumference")
    section.text("Commands: `" + cohorts.command("dhcp", settings.neonatal, "neonatal") + "`, `brainkernels inr "
                 f"train --data neonatal --out run --dims {config.dims} --width {config.width} --depth {config.depth} "
                 f"--latent-size {config.latent_size} --steps {config.steps}`, `brainkernels inr evaluate --model run "
                 f"--data neonatal --fit-steps {settings.fit_steps}`, `brainkernels inr predict ...`.")
    return section
