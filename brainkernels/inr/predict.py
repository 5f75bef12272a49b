"""Predicting one scan at other ages, and the "average" brain at any age, written as NIfTI (the
input's geometry) with PNG montages."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from brainkernels.atomic import write_csv
from brainkernels.data.command_folders import check_output_files, check_output_folder
from brainkernels.data.layouts.dhcp import read_dhcp
from brainkernels.data.synth.cohort import read_cohort
from brainkernels.data.synth.neonatal import head_circumference_cm as synthetic_head_circumference_cm
from brainkernels.data.volume import Volume, is_nifti, load_nifti, save_nifti
from brainkernels.errors import BrainkernelsError
from brainkernels.inr.data import ModelGrid, prepare_input
from brainkernels.inr.evaluate import head_circumference
from brainkernels.inr.figures import growth_plot, sequence_montage
from brainkernels.inr.infer import FIT_STEPS, atlas_latents, decode_sequence, fit_latent, require_plausible
from brainkernels.inr.train import load_trained, unmirrored_rows
from brainkernels.runtime import setup, teardown


def _name(age: float) -> str:
    return f"{age:g}w".replace(".", "p")


def _reconstruction_path(out: Path) -> Path:
    return out.with_name(f"{out.name.removesuffix('.gz').removesuffix('.nii')}_reconstruction.nii.gz")


def predict(run_dir: str | os.PathLike, scan_path: str | os.PathLike, age_in: float, ages_out: Sequence[float],
            out: str | os.PathLike, *, fit_steps: int | None = None, fit_voxels: int | None = None,
            device: str = "auto", overwrite: bool = False, quiet: bool = False) -> list[Path]:
    """Fit a latent to the scan at ``scan_path`` (age ``age_in`` weeks) and write its decoding at
    ``age_in`` (the reconstruction) and at each of ``ages_out``.

    ``out`` ending in .nii/.nii.gz with one output age: that file, and ``<stem>_reconstruction``
    beside it. Otherwise a folder: ``<age>w.nii.gz`` per age, ``reconstruction.nii.gz`` and
    ``sequence.png``. Existing files are replaced only with ``overwrite`` (a folder must be new or
    empty without it). Returns the paths written."""
    out = Path(out)
    if is_nifti(out) and len(ages_out) > 1:
        raise BrainkernelsError(f"{out}: several ages are written to a folder; give a folder name, not a NIfTI name")
    require_plausible([age_in, *ages_out])
    if is_nifti(out):
        check_output_files([out, _reconstruction_path(out)], overwrite)
    else:
        check_output_folder(out, None, overwrite)
    distributed = setup(device)
    try:
        trained = load_trained(run_dir, distributed.device)
        scan = prepare_input(load_nifti(scan_path), trained.grid, str(scan_path))
        latent = fit_latent(trained.model, scan, age_in, steps=fit_steps or FIT_STEPS[trained.settings.dims],
                            voxels=fit_voxels, quiet=quiet)
        images = decode_sequence(trained.model, latent, [age_in, *ages_out], trained.grid.model_shape)
    finally:
        teardown()
    if is_nifti(out):
        targets = [_reconstruction_path(out), out]
    else:
        out.mkdir(parents=True, exist_ok=True)
        targets = [out / "reconstruction.nii.gz", *(out / f"{_name(age)}.nii.gz" for age in ages_out)]
    written = [save_nifti(scan.to_volume(image), target) for image, target in zip(images, targets)]
    if len(ages_out) > 1:
        montage = targets[1].parent / "sequence.png"
        sequence_montage([scan.image, *images[1:]], [age_in, *ages_out], montage,
                         title=f"{Path(scan_path).name}: input ({age_in:g} weeks) and predictions")
        written.append(montage)
    return written


def atlas(run_dir: str | os.PathLike, ages: Sequence[float], out: str | os.PathLike, *,
          data: str | os.PathLike | None = None, device: str = "auto", overwrite: bool = False) -> list[Path]:
    """The zero-latent and mean-latent age sequences: ``<zero|mean>_<age>w.nii.gz`` (the model
    grid with the training spacing, centred on the origin; intensities in [0, 1]) and one montage
    per latent, in the folder ``out`` (new or empty, or with ``overwrite`` replacing those files).
    With a cohort ``data`` on the model's grid, also their head circumference against the
    cohort's growth: ``head_circumference.csv`` and ``head_circumference.png``."""
    require_plausible(ages)
    out = check_output_folder(out, None, overwrite)
    distributed = setup(device)
    try:
        trained = load_trained(run_dir, distributed.device)
        sequences = {name: decode_sequence(trained.model, latent, ages, trained.grid.model_shape)
                     for name, latent in atlas_latents(trained.model, unmirrored_rows(trained.keys)).items()}
    finally:
        teardown()
    out.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*trained.grid.spacing, 1.0])
    affine[:3, 3] = -np.array(trained.grid.spacing) * np.array(trained.grid.shape) / 2
    written = []
    for name, images in sequences.items():
        for age, image in zip(ages, images):
            volume = Volume(image.cpu().reshape(1, *trained.grid.shape[:2], -1), affine)
            written.append(save_nifti(volume, out / f"{name}_{_name(age)}.nii.gz"))
        written.append(out / f"{name}.png")
        sequence_montage(images, ages, written[-1], title=f"{name} latent")
    if data is not None:
        written += _growth(sequences, ages, trained.grid, data, out)
    return written


def _growth(sequences: dict[str, Sequence], ages: Sequence[float], grid: ModelGrid, data: str | os.PathLike,
            out: Path) -> list[Path]:
    """The head circumference of each average brain at each age, beside that of every scan of the
    cohort ``data`` (measured the same way, on the model's grid) and, for a synthetic cohort, the
    median growth curve its generator drew the heads from."""
    atlases = {name: [head_circumference(image, grid) for image in images] for name, images in sequences.items()}
    scans = read_dhcp(data)
    cohort = [(scan.age_weeks, head_circumference(prepare_input(load_nifti(scan.t2w_path), grid,
                                                                str(scan.t2w_path)).image, grid))
              for scan in scans]
    rows = [{"age_weeks": age, **{f"{name}_hc_cm": values[index] for name, values in atlases.items()}}
            for index, age in enumerate(ages)]
    write_csv(out / "head_circumference.csv", rows)
    growth_plot(ages, atlases, cohort, out / "head_circumference.png", cohort_name=Path(data).name,
                median_curve=_synthetic_growth(data))
    return [out / "head_circumference.csv", out / "head_circumference.png"]


def _synthetic_growth(data: str | os.PathLike) -> Callable | None:
    """The median growth curve (cm against weeks) a synthetic dHCP cohort's heads were drawn
    from; None for any other cohort."""
    try:
        cohort = read_cohort(data)
    except (FileNotFoundError, ValueError):
        return None
    return synthetic_head_circumference_cm if cohort.kind == "dhcp" else None
