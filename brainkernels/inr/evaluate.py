"""Evaluation of a trained INR: for every held-out subject with two sessions, fit a latent to the
first and predict the last; PSNR, SSIM, MAE and head circumference (HC) of the prediction
against the true scan. The ablation trains the four variants (none, SGLA, SSL, both) and
evaluates each on the same test pairs."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.ndimage
import torch
from scipy import stats
from torch import Tensor

from brainkernels.atomic import write_csv
from brainkernels.data.cache import PreparedCache
from brainkernels.data.layouts.dhcp import DHCPScan, read_dhcp, scans_by_subject
from brainkernels.data.preprocess import foreground_mask
from brainkernels.data.volume import Volume, load_nifti
from brainkernels.errors import BrainkernelsError
from brainkernels.inr.data import ModelGrid, ModelInput, cached_input, preparation_request, prepare_input
from brainkernels.inr.figures import head_circumference_plot
from brainkernels.inr.infer import FIT_STEPS, decode, fit_latent
from brainkernels.inr.train import PAIRS_FILE, INRConfig, TrainedINR, load_trained, split_test_subjects, train
from brainkernels.metrics.image import head_circumference_cm, mae, psnr, ssim
from brainkernels.metrics.undefined import Undefined
from brainkernels.runtime import setup, shipped, teardown
from brainkernels.runtime.inference import evaluated, run_cohort
from brainkernels.runtime.prepared import CACHE_FOLDER, inference_cache_folder, prepared_entries
from brainkernels.runtime.trainer import DEFAULT_WORKERS

HEAD_THRESHOLD = 0.2
"""Normalised intensity above which a voxel is head (scalp and brain; background noise and the
dark skull lie below), for the HC of predicted and true scans alike."""
HEAD_GAP_MM = 5.0
"""Gaps the head mask closes: the dark skull between scalp and brain, and the breaks noise makes in
a thin scalp. Unclosed, a noisy scan's scalp ring can fall apart and leave the brain the largest
component, its HC 3-5 cm short of the head's (seen on synthetic 64^3 scans at 2.5 mm)."""
SUMMARY_KEYS = ("psnr", "ssim", "mae", "hc_sigma_cm", "hc_r")
COPY = "copy input"  # the baseline's row in the tables
ABLATION = {"none": (False, False), "sgla": (False, True), "ssl": (True, False), "both": (True, True)}
"""Variant name: (SSL, SGLA)."""


def head_mask(image, spacing) -> np.ndarray:
    """The head of a [0, 1] image (2D or 3D): voxels above ``HEAD_THRESHOLD``, closed across gaps of
    ``HEAD_GAP_MM``, the largest component with its holes filled."""
    above = image.float().cpu().numpy() > HEAD_THRESHOLD
    reach = max(1, round(HEAD_GAP_MM / min(spacing)))
    closed = scipy.ndimage.binary_closing(np.pad(above, reach), iterations=reach)[(slice(reach, -reach),) * above.ndim]
    data = torch.from_numpy(closed if closed.ndim == 3 else closed[..., None]).float()[None]
    head = foreground_mask(Volume(data, np.eye(4)), threshold=0.5).numpy()
    return head if above.ndim == 3 else head[..., 0]


def head_circumference(image, grid: ModelGrid) -> float:
    """The head circumference (cm) of a [0, 1] image on the model grid ``grid``."""
    return head_circumference_cm(head_mask(image, grid.spacing), grid.spacing)


def test_pairs(data: str | os.PathLike, split_seed: int, subjects: str = "held-out",
               min_gap: float = 0.0) -> list[tuple]:
    """(first, last) sessions of each held-out subject (``subjects="all"``: of every subject with two
    sessions) whose last session is at least ``min_gap`` weeks after the first."""
    scans = read_dhcp(data)
    sessions = scans_by_subject(scans)
    test = evaluated(sorted(subject for subject, visits in sessions.items() if len(visits) > 1),
                     split_test_subjects(scans, split_seed)[1], subjects)
    if not test:
        raise BrainkernelsError(f"{data}: no subject has two sessions, so there is nothing to predict and compare")
    pairs = [(sessions[subject][0], sessions[subject][-1]) for subject in test]
    apart = [(first, last) for first, last in pairs if last.age_weeks - first.age_weeks >= min_gap]
    if not apart:
        longest = max(last.age_weeks - first.age_weeks for first, last in pairs)
        raise BrainkernelsError(f"--min-gap {min_gap:g}: none of the {len(pairs)} test pairs of {data} is that far "
                                f"apart (the longest gap is {longest:.2f} weeks)")
    return apart


def load_pair(pair: tuple[DHCPScan, DHCPScan], grid: ModelGrid) -> tuple:
    """(first, last, the first's model input, the last's model input), read from the NIfTI files
    (evaluation reads them from the prepared-volume cache)."""
    return *pair, *(prepare_input(load_nifti(scan.t2w_path), grid, str(scan.t2w_path)) for scan in pair)


def predict_pair(trained: TrainedINR, first: DHCPScan, last: DHCPScan, source: ModelInput, *, fit_steps: int,
                 fit_voxels: int | None) -> Tensor:
    """The INR's prediction of ``last`` from ``first`` (its model input ``source``): a latent fitted
    at the first's age, decoded at the last's."""
    latent = fit_latent(trained.model, source, first.age_weeks, steps=fit_steps, voxels=fit_voxels)
    return decode(trained.model, latent, last.age_weeks, trained.grid.model_shape).cpu()


def score_pair(first: DHCPScan, last: DHCPScan, source: ModelInput, truth: ModelInput, predicted: Tensor,
               grid: ModelGrid) -> dict:
    """The metrics of ``predicted`` (model grid, [0, 1]) against ``last`` (its model input ``truth``),
    and of the copy-input baseline (``source``, the first's)."""
    target = truth.image
    return {
        "subject": first.subject_id, "age_in": first.age_weeks, "age_out": last.age_weeks,
        "psnr": psnr(predicted, target), "ssim": ssim(predicted, target), "mae": mae(predicted, target),
        "hc_true_cm": head_circumference(target, grid),
        "hc_predicted_cm": head_circumference(predicted, grid),
        # The baseline a prediction must beat: the input scan itself, as if the baby had not grown.
        "psnr_copy": psnr(source.image, target), "ssim_copy": ssim(source.image, target),
        "mae_copy": mae(source.image, target), "hc_input_cm": head_circumference(source.image, grid),
    }  # fmt: skip


def copy_input(rows: list[dict]) -> list[dict]:
    """The pairs' rows as the copy-input baseline scores them (the input scan as the prediction)."""
    return [{**row, "psnr": row["psnr_copy"], "ssim": row["ssim_copy"], "mae": row["mae_copy"],
             "hc_predicted_cm": row["hc_input_cm"]} for row in rows]


def summarise(rows: list[dict]) -> dict[str, float]:
    """Mean PSNR, SSIM, MAE; σ (cm) of the HC error and Pearson r of predicted against true HC."""
    true = np.array([row["hc_true_cm"] for row in rows])
    predicted = np.array([row["hc_predicted_cm"] for row in rows])
    if len(rows) < 3:  # two points always correlate perfectly
        correlation = Undefined("needs ≥ 3 held-out babies")
    elif np.ptp(true) == 0 or np.ptp(predicted) == 0:
        correlation = Undefined("head circumferences all equal")
    else:
        correlation = float(stats.pearsonr(predicted, true).statistic)
    return {
        **{key: float(np.mean([row[key] for row in rows])) for key in ("psnr", "ssim", "mae")},
        "hc_sigma_cm": float(np.std(predicted - true, ddof=1)) if len(rows) > 1
        else Undefined("needs ≥ 2 held-out babies"),
        "hc_r": correlation,
    }


Predictor = Callable[[DHCPScan, DHCPScan, ModelInput], Tensor]
"""``predict(first, last, source)``: the prediction of ``last`` (model grid, [0, 1]) from ``first``,
whose model input is ``source``."""


def pair_rows(pairs: list[tuple], grid: ModelGrid, predict: Predictor, cache: Path, distributed, *,
              description: str, workers: int, quiet: bool, advice: str = "") -> list[dict]:
    """The scores (:func:`score_pair`) of ``predict`` on each (first, last) pair, the scans read
    through the prepared-volume cache ``cache`` as the INR's training prepares them."""
    scans = [scan for pair in pairs for scan in pair]
    # The training's request: the same grid, so scans it prepared are read again.
    entries = prepared_entries([preparation_request(scan, grid) for scan in scans], PreparedCache(cache),
                               distributed, quiet=quiet)
    entry_of = {scan.t2w_path: entry for scan, entry in zip(scans, entries, strict=True)}

    def scored(loaded: tuple) -> dict:
        first, last, source, truth = loaded
        return score_pair(first, last, source, truth, predict(first, last, source), grid)

    return run_cohort(pairs, scored, distributed, description=description,
                      load=lambda pair: (*pair, *(cached_input(entry_of[scan.t2w_path]) for scan in pair)),
                      workers=workers, quiet=quiet, advice=advice)


def _pair_rows(run_dir, data, cache: Path, *, fit_steps: int | None, fit_voxels: int | None, device: str,
               workers: int, quiet: bool, subjects: str = "held-out", min_gap: float = 0.0) -> list[dict]:
    distributed = setup(device)
    try:
        trained = load_trained(run_dir, distributed.device)
        steps = fit_steps or FIT_STEPS[trained.settings.dims]
        pairs = test_pairs(data, trained.settings.split_seed, subjects, min_gap)
        return pair_rows(pairs, trained.grid,
                         lambda first, last, source: predict_pair(trained, first, last, source, fit_steps=steps,
                                                                  fit_voxels=fit_voxels),
                         cache, distributed, description="inr evaluation", workers=workers, quiet=quiet,
                         advice="Pass --fit-voxels to fit on sampled voxels.")
    finally:
        teardown()


def evaluate(run_dir: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike | None = None, *,
             fit_steps: int | None = None, fit_voxels: int | None = None, device: str = "auto",
             workers: int = DEFAULT_WORKERS, quiet: bool = False,
             subjects: str = "held-out", min_gap: float = 0.0,
             cache: str | os.PathLike | None = None) -> dict[str, dict[str, float]]:
    """Evaluate a run on the held-out pairs of ``data`` (``subjects="all"``: the pairs of every
    subject scanned twice, for a cohort the model never saw) at least ``min_gap`` weeks apart;
    writes ``pairs.csv``, ``summary.csv`` and ``head_circumference.png`` to ``out`` (default
    RUN/evaluation) and returns the summary.
    ``workers`` processes load the next pairs meanwhile, from the prepared-volume cache ``cache``
    (default: the run's, else ``out/cache``). The summary has two rows, ``model`` and
    the copy-input baseline (``COPY``)."""
    out = shipped.evaluation_folder(run_dir, out)
    folder = inference_cache_folder(cache, shipped.resolve(run_dir, INRConfig), out)
    rows = _pair_rows(run_dir, data, folder, fit_steps=fit_steps, fit_voxels=fit_voxels, device=device,
                      workers=workers, quiet=quiet, subjects=subjects, min_gap=min_gap)
    out.mkdir(parents=True, exist_ok=True)
    results = {"model": summarise(rows), COPY: summarise(copy_input(rows))}
    write_csv(out / "pairs.csv", rows)
    write_csv(out / "summary.csv", [{"variant": name, **summary} for name, summary in results.items()])
    head_circumference_plot({"INR": rows}, out / "head_circumference.png")
    return results


def ablation(data: str | os.PathLike, out: str | os.PathLike, settings: INRConfig, *, fit_steps: int | None = None,
             fit_voxels: int | None = None, test_data: str | os.PathLike | None = None, min_gap: float = 0.0,
             resume: bool = False, overwrite: bool = False, quiet: bool = False) -> dict[str, dict[str, float]]:
    """Train the four variants of ``settings`` (SSL off/on x SGLA off/on, SGLA with probability
    ``settings.sgla`` or the paper's 0.1) in ``out/<variant>``, evaluate each on the same test
    pairs, at least ``min_gap`` weeks apart: the held-out subjects of ``data``, or every subject
    scanned twice in ``test_data`` (a cohort none of them saw). Writes ``ablation.csv`` and
    ``head_circumference.png`` to ``out``. The variants share one prepared-volume cache,
    ``out/cache``. ``resume`` continues each variant's training from its latest checkpoint (a
    finished one is only evaluated), so the four can also be trained apart, e.g. side by side with
    ``inr train --out OUT/<variant>``."""
    out = Path(out)
    probability = settings.sgla or INRConfig.sgla
    results, rows = {}, {}
    for name, (ssl, sgla) in ABLATION.items():
        variant = dataclasses.replace(settings, ssl=ssl, sgla=probability if sgla else 0.0)
        run = train(data, out / name, variant, resume=resume, overwrite=overwrite, quiet=quiet,
                    cache=out / CACHE_FOLDER)
        rows[name] = _pair_rows(run, test_data or data, out / CACHE_FOLDER, fit_steps=fit_steps,
                                fit_voxels=fit_voxels, device=settings.device, workers=settings.workers, quiet=quiet,
                                subjects="all" if test_data else "held-out", min_gap=min_gap)
        write_csv(run / PAIRS_FILE, rows[name])
        results[name] = summarise(rows[name])
    results[COPY] = summarise(copy_input(next(iter(rows.values()))))  # the same pairs for every variant
    write_csv(out / "ablation.csv", [{"variant": name, "ssl": ABLATION.get(name, ("", ""))[0],
                                      "sgla": ABLATION.get(name, ("", ""))[1], **summary}
                                     for name, summary in results.items()])
    head_circumference_plot({f"SSL {'on' if ABLATION[name][0] else 'off'}, SGLA {'on' if ABLATION[name][1] else 'off'}":
                             variant_rows for name, variant_rows in rows.items()}, out / "head_circumference.png")
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    lines = [f"{'variant':<10}" + "".join(f"{key:>13}" for key in SUMMARY_KEYS)]
    lines += [f"{name:<10}" + "".join(f"{summary[key]:>13.4f}" for key in SUMMARY_KEYS)
              for name, summary in results.items()]
    return "\n".join(lines)
