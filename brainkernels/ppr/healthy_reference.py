"""What a healthy head's anomaly map looks like, voxel by voxel: the mean and spread of the maps of
the healthy training scans, and the maps of a new scan measured against them.

PPR's position error is not uniform in healthy heads: a patch that sees the skull is placed
almost exactly, one deep in the white matter much less so. Against the whole brain's error a
lesion near the skull stays unremarkable and healthy deep tissue looks anomalous; against what is
usual at its own voxel (the scans share one grid: co-registration is PPR's premise) it stands out.
The same holds for the autoencoder's reconstruction error. On the synthetic 96^3 cohort this
turned AUROCs of 0.64 / 0.72 (left / right bleed, maximum error as in the paper) into 0.82 / 0.84
with the same model (docs/ppr.md).

For PPR the reference holds each axis of the displacement f(p_x) - x, not only its length: where
healthy patches are placed consistently off along one axis, a lesion that moves the estimate the
other way, or along another axis, changes the length little but each axis much. With the 36 000-step
model shipped before, this raised the right-bleed AUROC on its held-out cohort from 0.670 to 0.812
(docs/ppr.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from brainkernels.errors import BrainkernelsError
from brainkernels.ppr.autoencoder import AutoEncoder, reconstruction_error
from brainkernels.ppr.data import PreparedScan
from brainkernels.ppr.infer import Precision, displacement_map
from brainkernels.runtime import RunFolder, latest_checkpoint
from brainkernels.runtime.checkpoint import describe_load_error, save_atomically

FILE = "healthy_reference.pt"
TOP_FRACTION = 0.001  # a structure's score: the mean of its highest 0.1 % of voxels (0.6 ml of a 1 mm hemisphere)


def error_maps(model, scan: PreparedScan, device: torch.device | str = "cpu", mode: str = "dense",
               tile: int = 64, precision: Precision = "float32") -> dict[str, Tensor]:
    """The error map(s) of a prepared scan, (C, D, H, W) each, computed on ``device`` and returned
    on the CPU, zero outside the head: PPR's displacement (three channels; :func:`magnitude` is the
    paper's position error), or one map per post-filter for the AE. Outside the head there is no
    anatomy that could be anomalous, and PPR never trains on all-air patches, so its error there
    means nothing. ``precision``: PPR's dense pass (see ``predict_dense``)."""
    volume, head = scan.volume.data.to(device), scan.mask.to(device)
    if isinstance(model, AutoEncoder):
        return {name: (reconstruction_error(model, volume, filter=name) * head)[None].cpu()
                for name in ("erosion", "median")}
    return {"ppr": (displacement_map(model, volume, mode=mode, tile=tile, precision=precision) * head).cpu()}


def magnitude(error: Tensor) -> Tensor:
    """(D, H, W): the length of a (C, D, H, W) error map over its channels (PPR's position error;
    the AE's reconstruction error itself)."""
    return error.norm(dim=0)


@dataclass(frozen=True)
class HealthyReference:
    checkpoint: str  # the checkpoint whose model made the maps
    heads: Tensor  # (D, H, W) bool, the union of the scans' heads: outside it every map is zero
    mean: dict[str, Tensor]  # per map kind, (C, D, H, W)
    std: dict[str, Tensor]
    floor: dict[str, Tensor]  # (C,) the median spread in the heads: voxels that never vary do not dominate

    def normalise(self, maps: dict[str, Tensor]) -> dict[str, Tensor]:
        """(D, H, W) per kind: how far each voxel lies from the healthy scans' maps, in (floored)
        healthy standard deviations. A one-channel map gives its signed z-score (an error below the
        healthy one is no anomaly); PPR's displacement the root mean square of its axes' z-scores
        (a patch placed off either way along any axis is)."""
        normalised = {}
        for kind, error in maps.items():
            spread = self.std[kind].to(error.device) + self.floor[kind].to(error.device).view(-1, 1, 1, 1)
            score = (error - self.mean[kind].to(error.device)) / spread
            normalised[kind] = score[0] if len(score) == 1 else score.square().mean(0).sqrt()
        return normalised


def build(model, scans: list[PreparedScan], checkpoint_name: str, device: torch.device) -> HealthyReference:
    """The reference from the maps of ``scans`` (the healthy training scans) under ``model``.
    Sums run in float64, so memory does not grow with the number of scans (a hundred 256^3
    displacement maps would take 20 GB)."""
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
    return HealthyReference(checkpoint_name, heads, {kind: value.float() for kind, value in mean.items()}, std,
                            {kind: spread[:, heads].median(dim=1).values for kind, spread in std.items()})


def save(run: RunFolder, reference: HealthyReference) -> None:
    """Half precision, and only the voxels inside the heads, where the maps are not all zero: a
    z-score needs no more, and the file ships with built-in models (3.8 MB for 96^3, not 10.6)."""
    heads = reference.heads
    save_atomically({"checkpoint": reference.checkpoint, "shape": list(heads.shape),
                     "heads": torch.from_numpy(np.packbits(heads.numpy())),
                     "mean": {kind: value[:, heads].half() for kind, value in reference.mean.items()},
                     "std": {kind: value[:, heads].half() for kind, value in reference.std.items()},
                     "floor": reference.floor}, run.root / FILE)


def load(run: RunFolder) -> HealthyReference | None:
    """The run's reference if it was made by the run's latest checkpoint, else None."""
    path = run.root / FILE
    latest = latest_checkpoint(run.checkpoints)
    if not path.is_file() or latest is None:
        return None
    try:
        reference = _unpacked(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as error:  # unpickling refused, a damaged file or other contents: all mean "do not use"
        raise BrainkernelsError(f"{path}: not a healthy reference written by brainkernels "
                                f"({describe_load_error(error)}); "
                                "delete it and run `brainkernels ppr train --resume` with the run's settings to "
                                "make a new one") from None
    return reference if reference.checkpoint == latest.name else None


def _unpacked(saved: dict) -> HealthyReference:
    """The reference ``save`` wrote, its maps back on the whole grid; TypeError for other contents."""
    fields = {"checkpoint", "shape", "heads", "mean", "std", "floor"}
    if not isinstance(saved, dict) or set(saved) != fields:
        raise TypeError(f"its fields are {sorted(saved) if isinstance(saved, dict) else type(saved).__name__}, not "
                        f"{sorted(fields)} (a reference made before brainkernels measured each axis of PPR's "
                        "displacement has no heads)")
    checkpoint, shape, packed = saved["checkpoint"], saved["shape"], saved["heads"]
    if not isinstance(checkpoint, str):
        raise TypeError("its checkpoint name is not a string")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(size, int) and size > 0 for size in shape)
            and isinstance(packed, Tensor) and packed.dtype == torch.uint8 and packed.dim() == 1):
        raise TypeError("its grid shape or heads are not three sizes and a packed mask")
    voxels = shape[0] * shape[1] * shape[2]
    heads = torch.from_numpy(np.unpackbits(packed.numpy(), count=voxels).astype(bool)).reshape(shape)
    kinds = set(saved["mean"])
    if not kinds or set(saved["std"]) != kinds or set(saved["floor"]) != kinds:
        raise TypeError("its mean, spread and floor cover different maps")
    head_voxels = int(heads.sum())
    maps = {"mean": {}, "std": {}}
    for kind in kinds:
        floor = saved["floor"][kind]
        for field in maps:
            values = saved[field][kind]
            if not (isinstance(values, Tensor) and isinstance(floor, Tensor) and values.dim() == 2
                    and values.shape == (len(floor), head_voxels)):
                raise TypeError(f"its {kind} {field} does not hold a value per head voxel for each of its "
                                f"{len(floor)} channels")
            full = torch.zeros(len(floor), *shape)
            full[:, heads] = values.float()
            maps[field][kind] = full
    return HealthyReference(checkpoint, heads, maps["mean"], maps["std"], dict(saved["floor"]))


def structure_score(normalised: Tensor, region: Tensor) -> float:
    """The mean of the highest ``TOP_FRACTION`` of a structure's normalised voxels (at least one):
    a maximum that one noisy voxel cannot make."""
    values = normalised[region]
    return float(values.topk(max(1, int(TOP_FRACTION * values.numel()))).values.mean())
