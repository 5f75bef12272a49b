"""Detection (anomaly maps as NIfTI + PNG) and evaluation (per-structure ROC / AUROC) for PPR
and the autoencoder baseline."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from brainkernels.atomic import write_csv
from brainkernels.data.cache import PreparedCache
from brainkernels.data.command_folders import check_output_folder
from brainkernels.data.layouts.common import load_label_map
from brainkernels.data.layouts.cq500 import MASK_MEANING, CQ500Scan, load_cq500_structures, read_cq500
from brainkernels.data.synth.cohort import read_cohort
from brainkernels.data.synth.cq500 import finding_kinds
from brainkernels.data.volume import Volume, nifti_files_below, save_nifti
from brainkernels.errors import BrainkernelsError
from brainkernels.figures import figure_point, orthogonal_slices, plt, save_figure
from brainkernels.metrics.undefined import Undefined
from brainkernels.ppr import healthy_reference, reference_grid
from brainkernels.ppr.data import PreparedScan, cached_scan, preparation_request, prepare
from brainkernels.ppr.healthy_reference import error_maps, magnitude
from brainkernels.ppr.infer import Precision
from brainkernels.ppr.train import NEGATIVES, PPRConfig, healthy_split, load_trained
from brainkernels.runtime import RunFolder, setup, shipped, teardown
from brainkernels.runtime.inference import evaluated, run_cohort
from brainkernels.runtime.prepared import inference_cache_folder, prepared_entries
from brainkernels.runtime.trainer import DEFAULT_WORKERS

MAX_ERROR = "maximum error (paper)"
VS_HEALTHY = "vs healthy scans"
COLUMN_SUFFIX = {MAX_ERROR: "max_error", VS_HEALTHY: "vs_healthy"}  # of the scores in scores.csv
# Structure label in structures.nii.gz, the scan label it is scored against, and the AE post-filter.
STRUCTURES = {
    "left hemisphere bleed": (1, "left_bleed", "erosion"),
    "right hemisphere bleed": (2, "right_bleed", "erosion"),
    "fracture (skull)": (3, "fracture", "median"),
}


def input_files(path: Path) -> list[Path]:
    """A scan, or the scans in a folder and below it."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise BrainkernelsError(f"{path}: no such file or folder")
    return nifti_files_below(path)


def _true_findings(masks: Path | None, scan) -> dict[str, torch.Tensor]:
    """The scan's voxel masks of haemorrhage and fracture from ``masks/<name>.nii.gz``, when given."""
    if masks is None or not (path := masks / f"{scan.name}.nii.gz").is_file():
        return {}
    labels = load_label_map(path, {0, 1, 2}, MASK_MEANING).data[0]
    if labels.shape != scan.mask.shape:
        raise BrainkernelsError(f"{path}: mask of shape {tuple(labels.shape)} does not match its scan "
                                f"{tuple(scan.mask.shape)}")
    return {name: labels == value for name, value in (("true haemorrhage", 1), ("true fracture", 2))
            if (labels == value).any()}


def anomaly_figure(scan, error: torch.Tensor, label: str, unit: str, truth: dict[str, torch.Tensor],
                   warning: str | None = None) -> plt.Figure:
    """The scan's slices through its true finding when known, else through the map's (smoothed)
    maximum inside the head, with the highest tenth of the head's errors over them."""
    union = torch.stack(list(truth.values())).any(0) if truth else None
    point = figure_point(scan.mask, truth=union, score=error)
    # Show the highest tenth of the head's errors, so the scan stays visible under them.
    low = float(torch.quantile(error[scan.mask][:1_000_000], 0.9))
    return orthogonal_slices(scan.volume.data[0], point=point, overlay=error, outlines=truth,
                             overlay_label=f"{label} ({unit})" if unit else label,
                             overlay_range=(low, max(float(error.max()), low + 1e-6)),
                             title=f"{scan.name}: PPR anomaly map, {label} (maximum {float(error.max()):.3g}"
                                   + (f" {unit})" if unit else ")") + (f"\n{warning}" if warning else ""))


def detect(run_dir: str | os.PathLike, inputs: str | os.PathLike, out: str | os.PathLike, *,
           mode: Literal["dense", "patchwise"] = "dense", tile: int = 64, device: str = "auto",
           masks: str | os.PathLike | None = None, workers: int = DEFAULT_WORKERS, overwrite: bool = False,
           quiet: bool = False, precision: Precision = "float32") -> list[Path]:
    """Write ``<name>_anomaly.nii.gz`` (input geometry) and ``<name>_anomaly.png`` for each input scan
    into ``out`` (new or empty, or with ``overwrite`` replacing those files). ``masks``: a folder of
    voxel masks ``<name>.nii.gz`` (0 none, 1 haemorrhage, 2 fracture) whose findings the figures cut
    through and outline; ``workers`` processes load the next scans meanwhile."""
    out = check_output_folder(out, None, overwrite)
    run_dir = shipped.resolve(run_dir, PPRConfig)
    files = input_files(Path(inputs))
    if masks is not None and not Path(masks).is_dir():
        raise BrainkernelsError(f"--masks {masks}: no such folder")
    distributed = setup(device)
    try:
        model, _ = load_trained(run_dir, distributed.device)
        run = RunFolder(run_dir)
        training = reference_grid.load_footprints(run)
        reference = _healthy_reference(run)
        label, unit = ("position error", "") if reference is None else ("error vs healthy scans", "SD")
        out.mkdir(parents=True, exist_ok=True)

        def one(scan: PreparedScan) -> Path:
            warning = reference_grid.check_scan(training, scan)
            if warning:
                warnings.warn(warning, stacklevel=1)
            maps = error_maps(model, scan, distributed.device, mode, tile, precision)
            maps = {kind: magnitude(error) for kind, error in maps.items()} if reference is None \
                else reference.normalise(maps)
            error = next(iter(maps.values())) * scan.mask
            target = out / f"{scan.name}_anomaly.nii.gz"
            save_nifti(Volume(error[None], scan.volume.affine), target)
            truth = _true_findings(None if masks is None else Path(masks), scan)
            save_figure(anomaly_figure(scan, error, label, unit, truth, warning), out / f"{scan.name}_anomaly.png")
            return target

        return run_cohort(files, one, distributed, description="anomaly maps", load=prepare, workers=workers,
                          quiet=quiet, sizes=f"mode={mode}, tile={tile}", advice="Lower --tile to use less memory.")
    finally:
        teardown()


def _healthy_reference(run: RunFolder) -> healthy_reference.HealthyReference | None:
    reference = healthy_reference.load(run)
    if reference is None:
        warnings.warn(f"{run.root}: no healthy reference for its latest checkpoint (the run stopped before the "
                      "end of training, or has fewer than two healthy training scans): maps are the raw error, "
                      "scored by their maximum as in the paper; `brainkernels ppr train --resume` with the "
                      "run's settings makes one", stacklevel=2)
    return reference


def _structure_scores(maps: dict[str, torch.Tensor], normalised: dict[str, torch.Tensor] | None,
                      structures: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per score and structure: the maximum error inside it (the paper thresholds this), and, with
    a healthy reference, the top of its error measured against healthy scans."""
    scores: dict[str, dict[str, float]] = {MAX_ERROR: {}}
    if normalised is not None:
        scores[VS_HEALTHY] = {}
    errors = {kind: magnitude(error) for kind, error in maps.items()}  # once per map, not per structure
    for name, (label, _, ae_filter) in STRUCTURES.items():
        kind = "ppr" if "ppr" in maps else ae_filter
        region = structures == label
        present = bool(region.any())
        absent = Undefined(f"no label {label} in structures.nii.gz")
        scores[MAX_ERROR][name] = float(errors[kind][region].max()) if present else absent
        if normalised is not None:
            scores[VS_HEALTHY][name] = healthy_reference.structure_score(normalised[kind], region) if present \
                else absent
    return scores


def _roc_figure(curves: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, float]], title: str) -> plt.Figure:
    figure, axis = plt.subplots(figsize=(6, 5.5))
    colours = dict(zip(STRUCTURES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for (score, name), (false_positive, true_positive, auroc) in curves.items():
        axis.plot(false_positive, true_positive, color=colours[name], linewidth=2 if score == VS_HEALTHY else 1.2,
                  linestyle="-" if score == VS_HEALTHY else "--", label=f"{name}, {score} (AUROC {auroc:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    # Below the axes: inside, six entries covered a quarter of the curves.
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize="small", ncol=1, frameon=False)
    figure.tight_layout()
    return figure


def _score_column(label: str, score: str) -> str:
    return f"{label}_{COLUMN_SUFFIX[score]}"


def _finding_kinds(data: str | os.PathLike) -> dict[str, dict[str, str]]:
    """The kinds of a synthetic cohort's findings, from its cohort.json."""
    try:
        cohort = read_cohort(data)
    except (FileNotFoundError, ValueError) as error:
        raise BrainkernelsError(f"--by-kind needs a synthetic cohort, whose cohort.json records the kind of each "
                                f"finding ({error})") from error
    if cohort.kind != "cq500":
        raise BrainkernelsError(f"{data}: a synthetic {cohort.kind} cohort, not cq500")
    return finding_kinds(cohort.records)


def _groups(kinds: dict[str, dict[str, str]] | None) -> list[tuple[str, str, str | None]]:
    """(name, scan label, finding kind or None for all) of every AUROC to report: each structure,
    then, with ``kinds``, each structure per kind of its finding ("fracture (skull): depressed")."""
    groups = [(name, label, None) for name, (_, label, _) in STRUCTURES.items()]
    if kinds:
        for name, (_, label, _) in STRUCTURES.items():
            present = sorted({scan_kinds[label] for scan_kinds in kinds.values() if label in scan_kinds})
            groups += [(f"{name}: {kind}", label, kind) for kind in present]
    return groups


def evaluate(run_dir: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike | None = None, *,
             mode: Literal["dense", "patchwise"] = "dense", tile: int = 64, device: str = "auto",
             workers: int = DEFAULT_WORKERS, quiet: bool = False, precision: Precision = "float32",
             subjects: str = "held-out", cache: str | os.PathLike | None = None, negatives: str = "all",
             by_kind: bool = False) -> dict[str, dict[str, float]]:
    """Score the held-out scans of the cohort at ``data`` (``subjects="all"``: every scan, for a
    cohort the model never saw) per structure; writes ``scores.csv``,
    ``auroc.csv`` and ``roc.png`` to ``out`` (default ``RUN/evaluation``) and returns the AUROCs,
    per score (``VS_HEALTHY`` when the run has a healthy reference, and ``MAX_ERROR``) and structure.
    The prepared scans come from the cache ``cache`` (default: the run's, else ``out/cache``).

    ``negatives`` (``NEGATIVES``): the scans each AUROC tells the positives from, every held-out
    scan without the structure's finding (the paper's) or the healthy ones only. ``by_kind``
    (synthetic cohorts): also one AUROC per kind of finding, e.g. "fracture (skull): depressed",
    its positives the scans with that kind."""
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {', '.join(NEGATIVES)}; got {negatives!r}")
    kinds = _finding_kinds(data) if by_kind else None
    out, run_dir = shipped.evaluation_folder(run_dir, out), shipped.resolve(run_dir, PPRConfig)
    distributed = setup(device)
    try:
        model, settings = load_trained(run_dir, distributed.device)
        reference = _healthy_reference(RunFolder(run_dir))
        cohort = read_cq500(data)
        if cohort.structures_path is None:
            raise BrainkernelsError(f"{cohort.root}: evaluation needs structures.nii.gz (hemispheres and skull)")
        structures = load_cq500_structures(cohort).data[0].long()
        held_out = evaluated(cohort.scans, healthy_split(cohort.scans, settings.split_seed)[1], subjects)
        # The training's request: its settings are the run's, so scans it prepared are read again.
        entries = prepared_entries([preparation_request(record.path, settings.patch) for record in held_out],
                                   PreparedCache(inference_cache_folder(cache, run_dir, out)), distributed,
                                   quiet=quiet)
        entry_of = {record.name: entry for record, entry in zip(held_out, entries, strict=True)}

        def one(loaded: tuple[CQ500Scan, PreparedScan]):
            record, scan = loaded
            maps = error_maps(model, scan, distributed.device, mode, tile, precision)
            return record, _structure_scores(maps, None if reference is None else reference.normalise(maps),
                                             structures)

        results = run_cohort(held_out, one, distributed, description="evaluation",
                             load=lambda record: (record, cached_scan(entry_of[record.name], record.path)),
                             workers=workers, quiet=quiet,
                             sizes=f"mode={mode}, tile={tile}", advice="Lower --tile to use less memory.")
        scores = ([VS_HEALTHY] if reference is not None else []) + [MAX_ERROR]
        aurocs: dict[str, dict[str, float]] = {score: {} for score in scores}
        if distributed.is_main:
            rows, curves = [], {}
            for record, structure_scores in results:
                row = {"name": record.name}
                for name, (_, label, _) in STRUCTURES.items():
                    row[label] = int(getattr(record, label))
                    for score in scores:
                        row[_score_column(label, score)] = structure_scores[score][name]
                rows.append(row)
            labels = [label for _, label, _ in STRUCTURES.values()]
            counts = {}
            for name, label, kind in _groups(kinds):
                positive = [row[label] == 1 and (kind is None or kinds[row["name"]].get(label) == kind)
                            for row in rows]
                negative = [row[label] == 0 and (negatives == "all" or not any(row[other] for other in labels))
                            for row in rows]
                chosen = [row for row, used in zip(rows, np.logical_or(positive, negative)) if used]
                truth = np.array([int(used) for used, other in zip(positive, negative) if used or other])
                counts[name] = (len(chosen), int(truth.sum()))
                for score in scores:
                    if truth.size == 0 or truth.min() == truth.max():  # ROC needs both classes
                        aurocs[score][name] = Undefined("needs held-out scans with and without it")
                        continue
                    values = np.array([row[_score_column(label, score)] for row in chosen])
                    aurocs[score][name] = float(roc_auc_score(truth, values))
                    if kind is None:
                        false_positive, true_positive, _ = roc_curve(truth, values)
                        curves[score, name] = (false_positive, true_positive, aurocs[score][name])
            write_csv(out / "scores.csv", rows)
            write_csv(out / "auroc.csv", [{"structure": name, "score": score, "auroc": value, "scans": counts[name][0],
                                            "positives": counts[name][1], "negatives": negatives}
                                           for score in scores for name, value in aurocs[score].items()])
            if curves:
                save_figure(_roc_figure(curves, f"{settings.model.upper()} (m={settings.network_size}), "
                                                f"{len(rows)} held-out scans"
                                                + ("" if negatives == "all" else ", negatives: healthy scans")),
                            out / "roc.png")
        return aurocs
    finally:
        teardown()
