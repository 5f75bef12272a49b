"""``segment`` (NIfTI mask, mean probability and variance maps, PNG overlays) and ``evaluate``
(Dice and HD95 per subject, per number of sampling steps and ensemble size, with plots)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from brainkernels.atomic import write_csv
from brainkernels.data.cache import PreparedCache
from brainkernels.data.command_folders import check_output_folder
from brainkernels.data.layouts.brats import MODALITIES, BraTSSubject, read_brats, read_brats_subject
from brainkernels.data.volume import Volume, save_nifti, voxel_spacing
from brainkernels.errors import BrainkernelsError
from brainkernels.figures import figure_point, orthogonal_slices, plt, save_figure
from brainkernels.metrics.segmentation import dice, hausdorff95
from brainkernels.metrics.undefined import Undefined
from brainkernels.patchddm.data import PreparedSubject, cached_subject, preparation_request, prepare_subject
from brainkernels.patchddm.infer import Segmentation, sample_members
from brainkernels.patchddm.train import PatchDDMConfig, load_trained, split_subjects
from brainkernels.runtime import setup, shipped, teardown
from brainkernels.runtime.inference import evaluated, run_cohort
from brainkernels.runtime.prepared import inference_cache_folder, prepared_entries
from brainkernels.runtime.progress import progress
from brainkernels.runtime.trainer import DEFAULT_WORKERS

FIGURE_CHANNEL = MODALITIES.index("flair")  # the sequence the tumour shows best on


def input_subjects(path: str | os.PathLike) -> list[BraTSSubject]:
    """One subject folder, or a BraTS-layout folder of them."""
    path = Path(path)
    if not path.is_dir():
        raise BrainkernelsError(f"{path}: no such folder (give a BraTS subject folder or a cohort folder)")
    if any(entry.name.startswith(f"{path.name}_") for entry in path.iterdir()):
        return [read_brats_subject(path)]
    return read_brats(path)


def write_figures(out: Path, subject_id: str, image: torch.Tensor, segmentation: Segmentation,
                  truth: torch.Tensor | None = None) -> None:
    """``<id>_segmentation.png`` (mean probability, the mask's and the truth's outlines) and
    ``<id>_uncertainty.png`` (ensemble variance) on the FLAIR slices through the true tumour when
    it is known, else through the most probable tumour inside the head."""
    mean, variance, mask = segmentation.mean(), segmentation.variance(), segmentation.mask()
    head = (image != 0).any(dim=0)  # normalised MR: the background is exactly 0
    point = figure_point(head, truth=truth, score=mean)
    outlines = {"segmentation (mean > 0.5)": mask} | ({"true tumour": truth > 0.5} if truth is not None else {})
    members = segmentation.members.shape[0]
    save_figure(orthogonal_slices(image[FIGURE_CHANNEL], point=point, overlay=mean, outlines=outlines,
                                  overlay_label="tumour probability", overlay_range=(0.2, 1.0),
                                  title=f"{subject_id}: mean tumour probability of {members} member(s), FLAIR"),
                out / f"{subject_id}_segmentation.png")
    save_figure(orthogonal_slices(image[FIGURE_CHANNEL], point=point, overlay=variance, outlines=outlines,
                                  overlay_label="ensemble variance",
                                  overlay_range=(0.005, max(0.25, float(variance.max()))),
                                  cmap="viridis", title=f"{subject_id}: uncertainty over {members} member(s), FLAIR"),
                out / f"{subject_id}_uncertainty.png")


SAMPLING_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _load_for_sampling(run_dir, device: torch.device, precision: str):
    if precision not in SAMPLING_DTYPES:
        raise BrainkernelsError(f"--precision must be one of {', '.join(SAMPLING_DTYPES)}; got {precision!r}")
    model, settings = load_trained(run_dir, device)
    return model.to(SAMPLING_DTYPES[precision]), settings


def segment(run_dir: str | os.PathLike, inputs: str | os.PathLike, out: str | os.PathLike, *, steps: int = 20,
            ensemble: int = 5, seed: int = 0, precision: str = "fp32", device: str = "auto",
            workers: int = DEFAULT_WORKERS, overwrite: bool = False, quiet: bool = False) -> list[Path]:
    """Segment every subject under ``inputs``; writes ``<id>_mask``, ``_probability`` and
    ``_variance`` NIfTI files (the input's affine) and PNGs to ``out`` (new or empty, or with
    ``overwrite`` replacing those files). Returns the mask paths. ``workers`` processes load the
    next subjects meanwhile."""
    out = check_output_folder(out, None, overwrite)
    subjects = input_subjects(inputs)
    distributed = setup(device)
    try:
        model, settings = _load_for_sampling(run_dir, distributed.device, precision)
        paths = {subject.subject_id: subject.modality_paths for subject in subjects}

        def one(prepared: PreparedSubject) -> Path:
            subject_id = prepared.subject_id
            for modality, channel in zip(MODALITIES, prepared.image[(slice(None), *prepared.crop)]):
                if channel.min() == channel.max():  # a blank or failed export: the model never saw one
                    warnings.warn(f"{paths[subject_id][modality]}: every voxel has the same value; the "
                                  "segmentation of this subject is not reliable", stacklevel=1)
            bar = progress(total=steps * ensemble, desc=f"{subject_id}: {ensemble} x {steps} steps",
                           quiet=quiet, main=distributed.is_main, leave=False)
            segmentation = sample_members(model, settings, prepared, steps=steps, ensemble=ensemble, seed=seed,
                                          on_step=lambda: bar.update(1))
            bar.close()
            affine = prepared.affine
            for name, data in (("mask", segmentation.mask().float()), ("probability", segmentation.mean()),
                               ("variance", segmentation.variance())):
                save_nifti(Volume(data[None], affine), out / f"{subject_id}_{name}.nii.gz")
            write_figures(out, subject_id, prepared.image[(slice(None), *prepared.crop)], segmentation)
            return out / f"{subject_id}_mask.nii.gz"

        return run_cohort(subjects, one, distributed, description="segmentation", workers=workers, quiet=quiet,
                          load=lambda subject: prepare_subject(subject, settings.volume_multiple, with_mask=False),
                          sizes=f"mode={settings.mode}", advice="Use --precision bf16 (about half the memory) or a "
                          "GPU with more memory; sampling needs the whole volume at once.")
    finally:
        teardown()


def _scores(segmentation: Segmentation, truth: torch.Tensor, sizes: list[int],
            spacing: tuple[float, ...]) -> list[dict]:
    masks = {size: segmentation.mask(size) for size in sizes}
    return [{"ensemble": size, "dice": dice(mask, truth), "hd95_mm": hausdorff95(mask, truth, spacing)}
            for size, mask in masks.items()]


def _summary(rows: list[dict]) -> list[dict]:
    summary = []
    for key in sorted({(row["steps"], row["ensemble"]) for row in rows}):
        chosen = [row for row in rows if (row["steps"], row["ensemble"]) == key]
        dices = np.array([row["dice"] for row in chosen])
        distances = np.array([row["hd95_mm"] for row in chosen])
        measured = np.isfinite(distances).any()
        undefined = Undefined("no subject had both a segmentation and a tumour")
        summary.append({"steps": key[0], "ensemble": key[1], "subjects": len(chosen),
                        "dice_mean": dices.mean(), "dice_std": dices.std(),
                        "hd95_mean_mm": np.nanmean(distances) if measured else undefined,
                        "hd95_std_mm": np.nanstd(distances) if measured else undefined,
                        **dict(zip(("hd95_q25_mm", "hd95_median_mm", "hd95_q75_mm"),
                                   np.nanpercentile(distances, (25, 50, 75)) if measured else [undefined] * 3))})
    return summary


def _plot(summary: list[dict], title: str) -> plt.Figure:
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for steps in sorted({row["steps"] for row in summary}):
        chosen = [row for row in summary if row["steps"] == steps]
        sizes = [row["ensemble"] for row in chosen]
        left.errorbar(sizes, [row["dice_mean"] for row in chosen], yerr=[row["dice_std"] for row in chosen],
                      marker="o", capsize=3, label=f"{steps} steps")
        # HD95 is skewed (a few stray voxels far away make it large): quartiles, as mean ± std would reach below 0.
        medians = np.array([row["hd95_median_mm"] for row in chosen], dtype=float)
        spread = [medians - [row["hd95_q25_mm"] for row in chosen], [row["hd95_q75_mm"] for row in chosen] - medians]
        right.errorbar(sizes, medians, yerr=spread, marker="o", capsize=3, label=f"{steps} steps")
    left.set(xlabel="ensemble size", ylabel="Dice (whole tumour), mean ± std", ylim=(0, 1))
    right.set(xlabel="ensemble size", ylabel="HD95 (mm), median and quartiles", ylim=(0, None))
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    return figure


def evaluate(run_dir: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike | None = None, *,
             steps: list[int] = (20,), ensemble: list[int] = (1, 3, 5), seed: int = 0, precision: str = "fp32",
             device: str = "auto", workers: int = DEFAULT_WORKERS, quiet: bool = False,
             subjects: str = "held-out", cache: str | os.PathLike | None = None) -> list[dict]:
    """Dice and HD95 on the run's test subjects of the cohort at ``data`` (``subjects="all"``: on
    every subject, for a cohort the model never saw), for every number of
    sampling steps and ensemble size; writes ``scores.csv`` (per subject), ``summary.csv``,
    ``dice_vs_ensemble.png`` and the figures of each subject to ``out`` (default RUN/evaluation).
    Returns the summary rows (mean and std over subjects). The prepared subjects come from the
    cache ``cache`` (default: the run's, else ``out/cache``)."""
    if not steps or not ensemble or min(ensemble) < 1:
        raise BrainkernelsError(f"--ensemble sizes must be at least 1 and --steps non-empty; got {ensemble}, {steps}")
    out, run_dir = shipped.evaluation_folder(run_dir, out), shipped.resolve(run_dir, PatchDDMConfig)
    distributed = setup(device)
    try:
        model, settings = _load_for_sampling(run_dir, distributed.device, precision)
        cohort = read_brats(data)
        test = evaluated(cohort, split_subjects(cohort, settings.split_seed)[2], subjects)
        if not test:
            raise BrainkernelsError(f"{data}: the cohort is too small to have test subjects")
        sizes = sorted(set(ensemble))
        # The training's request (subjects with their masks, padded as the run's model needs).
        requests = [preparation_request(subject, settings.volume_multiple, with_mask=True) for subject in test]
        entries = prepared_entries(requests, PreparedCache(inference_cache_folder(cache, run_dir, out)), distributed,
                                   quiet=quiet)
        entry_of = {subject.subject_id: entry for subject, entry in zip(test, entries, strict=True)}

        def one(prepared: PreparedSubject) -> list[dict]:
            subject_id = prepared.subject_id
            truth, spacing = prepared.mask[0][prepared.crop], voxel_spacing(prepared.affine)
            rows = []
            for count in progress(steps, desc=subject_id, quiet=quiet, main=distributed.is_main, leave=False):
                segmentation = sample_members(model, settings, prepared, steps=count, ensemble=sizes[-1], seed=seed)
                rows += [{"subject": subject_id, "steps": count, **row}
                         for row in _scores(segmentation, truth, sizes, spacing)]
            image = prepared.image[(slice(None), *prepared.crop)]
            write_figures(out / "figures", subject_id, image, segmentation, truth)
            return rows

        results = run_cohort(test, one, distributed, description="evaluation", workers=workers, quiet=quiet,
                             load=lambda subject: cached_subject(entry_of[subject.subject_id]),
                             sizes=f"mode={settings.mode}", advice="Evaluate on a GPU with more memory.")
        rows = [row for rows in results for row in rows]
        summary = _summary(rows)
        if distributed.is_main:
            write_csv(out / "scores.csv", rows)
            write_csv(out / "summary.csv", summary)
            save_figure(_plot(summary, f"PatchDDM ({settings.mode} mode), {len(test)} test subjects"),
                        out / "dice_vs_ensemble.png")
        return summary
    finally:
        teardown()
