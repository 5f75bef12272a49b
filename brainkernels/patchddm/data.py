"""PatchDDM's inputs: BraTS subjects normalised, padded to a size the U-Net takes, with the
coordinate channels, and the training samples of the three modes.

- ``patch``: a centre-weighted patch of the padded volume with three coordinate channels (a
  linear ramp from -1 to 1 along each axis of the whole volume), so the network learns where a
  patch lies and can later run on the whole volume at once;
- ``full``: the whole padded volume, no coordinates (the paper's FullRes baseline);
- ``half``: the whole volume at half resolution, no coordinates (HalfRes); the sampled mask is
  upsampled back to full resolution.

Training reads prepared subjects from the prepared-volume cache (``preparation_request``,
``cached_subject``): a patch sample maps only its window of the cached arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from brainkernels.data.cache import Entry, Request
from brainkernels.data.layouts.brats import BraTSSubject, load_brats_image, load_brats_seg, whole_tumour
from brainkernels.data.layouts.common import require_same_grid
from brainkernels.data.preprocess import normalize_mr
from brainkernels.data.sampling import center_weighted_patch_starts

Mode = Literal["patch", "full", "half"]
MODES = ("patch", "full", "half")


@dataclass(frozen=True)
class PreparedSubject:
    """A subject's normalised, padded image (4, D', H', W'), its whole-tumour mask there (or None),
    the original affine and the slices that crop the padding away again."""

    subject_id: str
    image: Tensor
    mask: Tensor | None
    affine: np.ndarray
    crop: tuple[slice, slice, slice]


def padded_size(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def pad_to_multiple(volume: Tensor, multiple: int) -> tuple[Tensor, tuple[slice, slice, slice]]:
    """``volume`` (C, D, H, W) zero-padded (centred) so every spatial size is a multiple of
    ``multiple``, and the slices that crop the result back."""
    padding, crop = [], []
    for size in volume.shape[1:]:
        extra = padded_size(size, multiple) - size
        before = extra // 2
        padding.append((before, extra - before))
        crop.append(slice(before, before + size))
    flat = [amount for pair in reversed(padding) for amount in pair]
    return F.pad(volume, flat), tuple(crop)


def coordinate_channels(shape: tuple[int, int, int], dtype: torch.dtype = torch.float32,
                        window: tuple[slice, slice, slice] | None = None) -> Tensor:
    """(3, D, H, W): channel c is a linear ramp from -1 to 1 along spatial axis c; with
    ``window``, only that part of it."""
    ramps = [torch.linspace(-1, 1, n, dtype=dtype) if n > 1 else torch.zeros(1, dtype=dtype) for n in shape]
    if window is not None:
        ramps = [ramp[part] for ramp, part in zip(ramps, window, strict=True)]
    return torch.stack(torch.meshgrid(*ramps, indexing="ij"))


def prepare_subject(subject: BraTSSubject, multiple: int, *, with_mask: bool) -> PreparedSubject:
    image = load_brats_image(subject)
    mask = None
    if with_mask:
        seg = load_brats_seg(subject)
        require_same_grid(image, seg)
        mask = whole_tumour(seg.data).float()
    normalised = normalize_mr(image).data
    padded, crop = pad_to_multiple(normalised, multiple)
    if mask is not None:
        mask, _ = pad_to_multiple(mask, multiple)
    return PreparedSubject(subject.subject_id, padded, mask, image.affine, crop)


def preparation_request(subject: BraTSSubject, multiple: int, *, with_mask: bool) -> Request:
    """The cache entry of :func:`prepare_subject`: arrays ``image`` (and ``mask``)."""
    sources = [*subject.modality_paths.values(), *([subject.seg] if with_mask else [])]

    def build() -> tuple[dict[str, np.ndarray], dict]:
        prepared = prepare_subject(subject, multiple, with_mask=with_mask)
        arrays = {"image": prepared.image.numpy(), **({"mask": prepared.mask.numpy()} if with_mask else {})}
        return arrays, {"subject_id": subject.subject_id, "affine": prepared.affine.tolist(), "with_mask": with_mask,
                        "crop": [[part.start, part.stop] for part in prepared.crop]}

    return Request("patchddm-subject", sources, {"multiple": multiple, "with_mask": with_mask}, build)


def cached_subject(entry: Entry) -> PreparedSubject:
    """The prepared subject of a cache entry, its arrays mapped (read when used)."""
    values = entry.values
    return PreparedSubject(values["subject_id"], entry.tensor("image"),
                           entry.tensor("mask") if values["with_mask"] else None, np.array(values["affine"]),
                           tuple(slice(start, stop) for start, stop in values["crop"]))


def half_resolution(volume: Tensor) -> Tensor:
    """(C, D, H, W) averaged over 2x2x2 blocks."""
    return F.avg_pool3d(volume[None], 2)[0]


def network_input(condition: Tensor, mode: Mode) -> Tensor:
    """The condition channels the network sees for a whole prepared image (4, D, H, W):
    + coordinates (patch), as is (full), at half resolution (half)."""
    if mode == "patch":
        return torch.cat([condition, coordinate_channels(tuple(condition.shape[1:]), condition.dtype)])
    return half_resolution(condition) if mode == "half" else condition


class TrainingSamples(Dataset):
    """One sample per cached subject (prepared with its mask): ``condition`` (4 or 7, P, P, P)
    and ``mask`` (1, P, P, P). Patch positions come from torch's generator."""

    def __init__(self, entries: list[Entry], mode: Mode, patch: int) -> None:
        self.entries, self.mode, self.patch = entries, mode, patch

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        prepared = cached_subject(self.entries[index])
        image, mask = prepared.image, prepared.mask
        if self.mode == "half":
            return {"condition": half_resolution(image), "mask": (half_resolution(mask) > 0.5).float()}
        if self.mode == "full":
            return {"condition": image, "mask": mask}
        shape = tuple(image.shape[1:])
        start = center_weighted_patch_starts(shape, self.patch, 1)[0].tolist()
        window = tuple(slice(first, first + self.patch) for first in start)
        # Only the window's bytes of the mapped arrays are read.
        condition = torch.cat([image[(slice(None), *window)], coordinate_channels(shape, image.dtype, window)])
        return {"condition": condition, "mask": mask[(slice(None), *window)]}
