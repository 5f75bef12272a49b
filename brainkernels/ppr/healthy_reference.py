"""What a healthy head's anomaly map looks like, voxel by voxel: the mean and spread of the maps of
the healthy training scans, and the maps of a new scan measured against them.

PPR's position error is not uniform in healthy heads: a patch that sees the skull is placed
almost exactly, one deep in the white matter much less so. Against the whole brain's error a
lesion near the skull stays unremarkable and healthy deep tissue looks anomalous; against what is
usual at its own voxel (the scans share one grid: co-registration is PPR's premise) it stands out.
The same holds for the autoencoder's reconstruction error. On the synthetic 96^3 cohort this
turned AUROCs of 0.64 / 0.72 (left / right bleed, maximum error as in the paper) into 0.82 / 0.84
with the same model (docs/ppr.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from brainkernels.errors import BrainkernelsError
from brainkernels.ppr.autoencoder import AutoEncoder, reconstruction_error
from brainkernels.ppr.data import PreparedScan
from brainkernels.ppr.infer import Precision, anomaly_map
from brainkernels.runtime import RunFolder, latest_checkpoint
from brainkernels.runtime.checkpoint import describe_load_error, save_atomically

FILE = "healthy_reference.pt"
TOP_FRACTION = 0.001  # a structure's score: the mean of its highest 0.1 % of voxels (0.6 ml of a 1 mm hemisphere)


def error_maps(model, scan: PreparedScan, device: torch.device | str = "cpu", mode: str = "dense",
               tile: int = 64, precision: Precision = "float32") -> dict[str, Tensor]:
    """The anomaly map(s) of a prepared scan, computed on ``device`` and returned on the CPU, zero
    outside the head: one for PPR, one per post-filter for the AE. Outside the head there is no
    anatomy that could be anomalous, and PPR never trains on all-air patches, so its error there
    means nothing. ``precision``: PPR's dense pass (see ``predict_dense``)."""
    volume, head = scan.volume.data.to(device), scan.mask.to(device)
    if isinstance(model, AutoEncoder):
        return {name: (reconstruction_error(model, volume, filter=name) * head).cpu() for name in ("erosion", "median")}
    return {"ppr": (anomaly_map(model, volume, mode=mode, tile=tile, precision=precision) * head).cpu()}


@dataclass(frozen=True)
class HealthyReference:
    checkpoint: str  # the checkpoint whose model made the maps
    mean: dict[str, Tensor]  # per map kind, (D, H, W)
    std: dict[str, Tensor]
    floor: dict[str, float]  # the median spread in the heads: voxels that never vary do not dominate

    def normalise(self, maps: dict[str, Tensor]) -> dict[str, Tensor]:
        """How many (floored) healthy standard deviations each voxel lies above the healthy mean."""
        return {kind: (error - self.mean[kind].to(error.device)) / (self.std[kind].to(error.device) + self.floor[kind])
                for kind, error in maps.items()}


def build(model, scans: list[PreparedScan], checkpoint_name: str, device: torch.device) -> HealthyReference:
    """The reference from the maps of ``scans`` (the healthy training scans) under ``model``.
    Sums run in float64, so memory does not grow with the number of scans (a hundred 256^3 maps
    would take 7 GB)."""
    if len(scans) < 2:
        raise ValueError(f"a healthy reference needs at least 2 scans; got {len(scans)}")
    sums: dict[str, Tensor] = {}
    squares: dict[str, Tensor] = {}
    heads = torch.zeros_like(scans[0].mask)
    for scan in scans:
        for kind, error in error_maps(model, scan, device).items():
            error = error.double()
            sums[kind] = sums.get(kind, 0) + error
            squares[kind] = squares.get(kind, 0) + error * error
        heads |= scan.mask
    count = len(scans)
    mean = {kind: total / count for kind, total in sums.items()}
    std = {kind: ((squares[kind] - count * mean[kind] ** 2) / (count - 1)).clamp(min=0).sqrt().float() for kind in sums}
    return HealthyReference(checkpoint_name, {kind: value.float() for kind, value in mean.items()}, std,
                            {kind: float(spread[heads].median()) for kind, spread in std.items()})


def save(run: RunFolder, reference: HealthyReference) -> None:
    """Half precision on disk (a z-score needs no more; the file ships with built-in models)."""
    save_atomically({"checkpoint": reference.checkpoint, "mean": _halved(reference.mean),
                     "std": _halved(reference.std), "floor": reference.floor}, run.root / FILE)


def _halved(maps: dict[str, Tensor]) -> dict[str, Tensor]:
    return {kind: value.half() for kind, value in maps.items()}


def load(run: RunFolder) -> HealthyReference | None:
    """The run's reference if it was made by the run's latest checkpoint, else None."""
    path = run.root / FILE
    latest = latest_checkpoint(run.checkpoints)
    if not path.is_file() or latest is None:
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        reference = HealthyReference(**saved)
        _check(reference)
        reference = HealthyReference(reference.checkpoint, *({kind: value.float() for kind, value in maps.items()}
                                                            for maps in (reference.mean, reference.std)),
                                     reference.floor)
    except Exception as error:  # unpickling refused, a damaged file or other contents: all mean "do not use"
        raise BrainkernelsError(f"{path}: not a healthy reference written by brainkernels "
                                f"({describe_load_error(error)}); "
                                "delete it and run `brainkernels ppr train --resume` with the run's settings to "
                                "make a new one") from None
    return reference if reference.checkpoint == latest.name else None


def _check(reference: HealthyReference) -> None:
    if not isinstance(reference.checkpoint, str):
        raise TypeError("its checkpoint name is not a string")
    kinds = set(reference.mean)
    if not kinds or set(reference.std) != kinds or set(reference.floor) != kinds:
        raise TypeError("its mean, spread and floor cover different maps")
    for kind in kinds:
        if not (isinstance(reference.mean[kind], Tensor) and isinstance(reference.std[kind], Tensor)
                and reference.mean[kind].shape == reference.std[kind].shape and reference.mean[kind].dim() == 3):
            raise TypeError(f"its {kind} mean and spread are not two volumes of one shape")


def structure_score(normalised: Tensor, region: Tensor) -> float:
    """The mean of the highest ``TOP_FRACTION`` of a structure's normalised voxels (at least one):
    a maximum that one noisy voxel cannot make."""
    values = normalised[region]
    return float(values.topk(max(1, int(TOP_FRACTION * values.numel()))).values.mean())
