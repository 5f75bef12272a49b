"""Detection (anomaly maps as NIfTI + PNG) and evaluation (per-structure ROC / AUROC) for PPR
and the autoencoder baseline."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from brainkernels.data.atomic import write_csv  # noqa: E402
from brainkernels.data.layouts.cq500 import load_cq500_structures, read_cq500  # noqa: E402
from brainkernels.data.volume import Volume, is_nifti, save_nifti  # noqa: E402
from brainkernels.errors import BrainkernelsError  # noqa: E402
from brainkernels.figures import orthogonal_slices, save_figure  # noqa: E402
from brainkernels.ppr import reference_grid  # noqa: E402
from brainkernels.ppr.autoencoder import AutoEncoder, reconstruction_error  # noqa: E402
from brainkernels.ppr.data import prepare  # noqa: E402
from brainkernels.ppr.infer import anomaly_map  # noqa: E402
from brainkernels.ppr.train import healthy_split, load_trained  # noqa: E402
from brainkernels.runtime import RunFolder, setup, teardown  # noqa: E402
from brainkernels.runtime.inference import run_cohort  # noqa: E402

# Structure label in structures.nii.gz, the scan label it is scored against, and the AE post-filter.
STRUCTURES = {
    "left hemisphere bleed": (1, "left_bleed", "erosion"),
    "right hemisphere bleed": (2, "right_bleed", "erosion"),
    "fracture (skull)": (3, "fracture", "median"),
}


def _maps(model, scan, mode: str, tile: int) -> dict[str, torch.Tensor]:
    """The anomaly map(s) of a prepared scan, zero outside the head: one for PPR, one per
    post-filter for the AE. Outside the head there is no anatomy that could be anomalous, and
    PPR never trains on all-air patches, so its error there means nothing."""
    head = scan.mask.to(scan.volume.data.device)
    if isinstance(model, AutoEncoder):
        return {name: reconstruction_error(model, scan.volume.data, filter=name) * head for name in ("erosion", "median")}
    return {"ppr": anomaly_map(model, scan.volume.data, mode=mode, tile=tile) * head}


def _input_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise BrainkernelsError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file() and is_nifti(p) and not p.name.startswith("."))
    if not files:
        raise BrainkernelsError(f"{path}: no .nii or .nii.gz files")
    return files


def detect(run_dir: str | os.PathLike, inputs: str | os.PathLike, out: str | os.PathLike, *,
           mode: Literal["dense", "patchwise"] = "dense", tile: int = 64, device: str = "auto",
           quiet: bool = False) -> list[Path]:
    """Write ``<name>_anomaly.nii.gz`` (input geometry) and ``<name>_anomaly.png`` for each input scan."""
    distributed = setup(device)
    try:
        model, _ = load_trained(run_dir, distributed.device)
        training = reference_grid.load_footprints(RunFolder(run_dir))
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)

        def one(path: Path) -> Path:
            scan = prepare(path)
            warning = reference_grid.check_scan(training, scan)
            if warning:
                warnings.warn(warning, stacklevel=1)
            volume = scan.volume.with_data(scan.volume.data.to(distributed.device))
            error = next(iter(_maps(model, type(scan)(scan.name, volume, scan.mask), mode, tile).values())).cpu()
            target = out / f"{scan.name}_anomaly.nii.gz"
            save_nifti(Volume(error[None], scan.volume.affine), target)
            peak = np.unravel_index(int(error.argmax()), error.shape)
            # Show the highest tenth of the head's errors, so the scan stays visible under them.
            low = float(torch.quantile(error[scan.mask][:1_000_000], 0.9))
            figure = orthogonal_slices(scan.volume.data[0], point=peak, overlay=error, overlay_label="position error",
                                       overlay_range=(low, max(float(error.max()), low + 1e-6)),
                                       title=f"{scan.name}: PPR anomaly map (max {error.max():.3f})"
                                       + (f"\n{warning}" if warning else ""))
            save_figure(figure, out / f"{scan.name}_anomaly.png")
            return target

        return run_cohort(_input_files(Path(inputs)), one, distributed, description="anomaly maps", quiet=quiet,
                          sizes=f"mode={mode}, tile={tile}", advice="Lower --tile to use less memory.")
    finally:
        teardown()


def _structure_scores(maps: dict[str, torch.Tensor], structures: torch.Tensor) -> dict[str, float]:
    """Per structure, the maximum of the anomaly map inside it (the paper thresholds this)."""
    scores = {}
    for name, (label, _, ae_filter) in STRUCTURES.items():
        error = maps.get("ppr", maps.get(ae_filter))
        region = structures == label
        scores[name] = float(error[region].max()) if region.any() else float("nan")
    return scores


def _roc_figure(results: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str) -> plt.Figure:
    figure, axis = plt.subplots(figsize=(5.5, 5))
    for name, (false_positive, true_positive, auroc) in results.items():
        axis.plot(false_positive, true_positive, label=f"{name} (AUROC {auroc:.3f})", linewidth=2)
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    axis.legend(loc="lower right")
    return figure


def evaluate(run_dir: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike | None = None, *,
             mode: Literal["dense", "patchwise"] = "dense", tile: int = 64, device: str = "auto",
             quiet: bool = False) -> dict[str, float]:
    """Score the held-out scans of the cohort at ``data`` per structure; writes ``scores.csv``,
    ``auroc.csv`` and ``roc.png`` to ``out`` (default ``RUN/evaluation``) and returns the AUROCs."""
    distributed = setup(device)
    try:
        model, settings = load_trained(run_dir, distributed.device)
        cohort = read_cq500(data)
        if cohort.structures_path is None:
            raise BrainkernelsError(f"{cohort.root}: evaluation needs structures.nii.gz (hemispheres and skull)")
        structures = load_cq500_structures(cohort).data[0].long()
        _, held_out = healthy_split(cohort.scans, settings.split_seed)

        def one(record):
            scan = prepare(record.path)
            volume = scan.volume.with_data(scan.volume.data.to(distributed.device))
            maps = {key: value.cpu() for key, value in _maps(model, type(scan)(scan.name, volume, scan.mask), mode,
                                                              tile).items()}
            return record, _structure_scores(maps, structures)

        results = run_cohort(held_out, one, distributed, description="evaluation", quiet=quiet,
                             sizes=f"mode={mode}, tile={tile}", advice="Lower --tile to use less memory.")
        aurocs = {}
        if distributed.is_main:
            out = Path(out) if out is not None else RunFolder(run_dir).root / "evaluation"
            rows, curves = [], {}
            for record, scores in results:
                row = {"name": record.name}
                for name, (_, label, _) in STRUCTURES.items():
                    row[f"{label}"] = int(getattr(record, label))
                    row[f"{label}_score"] = scores[name]
                rows.append(row)
            for name, (_, label, _) in STRUCTURES.items():
                truth = np.array([row[label] for row in rows])
                score = np.array([row[f"{label}_score"] for row in rows])
                if truth.min() == truth.max():  # ROC needs both classes
                    aurocs[name] = float("nan")
                    continue
                aurocs[name] = float(roc_auc_score(truth, score))
                false_positive, true_positive, _ = roc_curve(truth, score)
                curves[name] = (false_positive, true_positive, aurocs[name])
            write_csv(out / "scores.csv", rows)
            write_csv(out / "auroc.csv", [{"structure": name, "auroc": value, "scans": len(rows),
                                            "positives": sum(row[STRUCTURES[name][1]] for row in rows)}
                                           for name, value in aurocs.items()])
            if curves:
                save_figure(_roc_figure(curves, f"{settings.model.upper()} (m={settings.m}), {len(rows)} held-out scans"),
                            out / "roc.png")
        return aurocs
    finally:
        teardown()
