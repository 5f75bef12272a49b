"""PPR inputs: co-registered, histogram-equalised CT volumes with foreground masks, and the
training items (a volume's patches with their true positions).

Training reads the prepared scans from the prepared-volume cache (``preparation_request``): a
step's patches map only the bytes they cover."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from brainkernels.data.cache import Entry, Request
from brainkernels.data.preprocess import check_coregistration, equalize_ct, foreground_mask
from brainkernels.data.volume import Volume, load_nifti
from brainkernels.errors import BrainkernelsError
from brainkernels.ops import extract_patches3d
from brainkernels.ppr.infer import normalised_positions


@dataclass(frozen=True)
class PreparedScan:
    name: str
    volume: Volume  # equalised to [0, 1], air 0
    mask: Tensor  # (D, H, W) bool foreground


def prepare(path) -> PreparedScan:
    """Load a CT in Hounsfield units and equalise it as in the paper; a scan already equalised
    (values in [0, 1], as ``brainkernels preprocess --pipeline ct`` writes it) is used as it is."""
    volume = load_nifti(path)
    if volume.data.min() < 0 or volume.data.max() > 1:  # raw CT: air is about -1000 HU
        volume = equalize_ct(volume)
    mask = foreground_mask(volume)
    if not mask.any():
        raise BrainkernelsError(f"{path}: the scan is all background")
    name = volume.path.name.removesuffix(".gz").removesuffix(".nii") if volume.path else "scan"
    return PreparedScan(name, volume, mask)


def preparation_request(path, patch: int) -> Request:
    """The cache entry of :func:`prepare`: arrays ``image``, ``mask`` and ``near_foreground``
    (for ``patch``)."""

    def build() -> tuple[dict[str, np.ndarray], dict]:
        scan = prepare(path)
        arrays = {"image": scan.volume.data.numpy(), "mask": scan.mask.numpy(),
                  "near_foreground": near_foreground(scan.mask, patch).numpy()}
        return arrays, {"name": scan.name, "affine": scan.volume.affine.tolist()}

    return Request("ppr-scan", [path], {"patch": patch}, build)


def cached_scan(entry: Entry, path) -> PreparedScan:
    """The prepared scan of ``path`` from its cache entry, mapped (read when used)."""
    volume = Volume(entry.tensor("image"), np.array(entry.values["affine"]), Path(path))
    return PreparedScan(entry.values["name"], volume, entry.tensor("mask"))


def check_cohort(prepared: list[PreparedScan]) -> None:
    """Refuse scans on different grids and warn about poorly co-registered ones (PPR needs
    co-registered inputs)."""
    shapes = {item.volume.shape for item in prepared}
    if len(shapes) > 1:
        raise BrainkernelsError(f"the scans are not on one grid (shapes {sorted(shapes)}): PPR needs co-registered "
                                "scans; run `brainkernels preprocess --pipeline ct` and register them first")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        check_coregistration([item.volume for item in prepared])


def near_foreground(mask: Tensor, patch: int) -> Tensor:
    """(D, H, W) bool: the patch centred at each voxel holds some foreground."""
    half = patch // 2
    padded = F.pad(mask[None, None].float(), (half, patch - 1 - half) * 3)
    # A cube maximum is three line maxima: patch-fold fewer comparisons than one cube pooling.
    for kernel in ((patch, 1, 1), (1, patch, 1), (1, 1, patch)):
        padded = F.max_pool3d(padded, kernel, stride=1)
    return padded[0, 0] > 0


class PositionPatches(Dataset):
    """One item per cached training scan: ``count`` patches at uniformly drawn centres, their true
    normalised positions, and whether each holds any foreground (all-background patches are
    left out of the loss, as in the paper). Centres come from torch's generator."""

    def __init__(self, entries: list[Entry], patch: int, count: int) -> None:
        if not entries:
            raise BrainkernelsError("no healthy training scans")
        self.entries, self.patch, self.count = entries, patch, count

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        entry = self.entries[index]
        volume = entry.tensor("image")
        shape = tuple(volume.shape[1:])
        centers = torch.stack([torch.randint(0, size, (self.count,)) for size in shape], dim=1)
        return {
            "patches": extract_patches3d(volume, centers, self.patch),
            "targets": normalised_positions(centers, shape),
            "keep": entry.tensor("near_foreground")[centers[:, 0], centers[:, 1], centers[:, 2]],
        }


class WholeVolumes(Dataset):
    """One item per cached training scan, for the autoencoder baseline."""

    def __init__(self, entries: list[Entry]) -> None:
        if not entries:
            raise BrainkernelsError("no healthy training scans")
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.entries[index].tensor("image")}
