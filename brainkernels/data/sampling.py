"""Where training patches are taken from a volume, for PPR and PatchDDM.

Every sampler takes a ``torch.Generator`` (None: torch's global generator) and returns (count, 3)
int64 voxel indices (d, h, w), on the mask's device when it samples from a mask and on the
generator's device otherwise.

PPR (thesis ch. 6, section 3.1): each iteration takes 256 patches from one volume, "sampled
independently from a uniform distribution over input coordinates", and "patches that exclusively
contain background (i.e. no part of the subject's anatomy) are discarded for the computation of
the loss". That is :func:`uniform_centers` followed by :func:`discard_background_patches`.
:func:`uniform_foreground_centers` is the variant that never yields a background-only patch and
always yields ``count`` patches; it differs from the paper near the surface of the head, whose
patches it draws only when their centre voxel is foreground.

PatchDDM (thesis ch. 7, Appendix A): the normalised position of a patch among the admissible
(fully inside) positions is, per axis, distributed as X + Y with X ~ U[-1/3, 1/3] and
Y ~ U[-2/3, 2/3]: a trapezoid that is flat on [-1/3, 1/3] and falls linearly to zero at -1 and 1,
because BraTS subjects are centred in their volume. The three axes are drawn independently.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

PPR_PATCHES_PER_VOLUME = 256
"""Patches per training iteration in the PPR paper (one volume per iteration)."""


def uniform_centers(
    volume_shape: Sequence[int], count: int = PPR_PATCHES_PER_VOLUME, generator: torch.Generator | None = None
) -> Tensor:
    """``count`` patch centres drawn uniformly over every voxel of a (D, H, W) volume."""
    shape = _spatial_shape(volume_shape, "volume_shape")
    _check_count(count)
    device = _device(generator)
    return torch.stack([torch.randint(extent, (count,), generator=generator, device=device) for extent in shape], dim=1)


def uniform_foreground_centers(
    mask: Tensor, count: int = PPR_PATCHES_PER_VOLUME, generator: torch.Generator | None = None
) -> Tensor:
    """``count`` patch centres drawn uniformly over the foreground (non-zero) voxels of a
    (D, H, W) mask; the result is on the mask's device."""
    _check_mask(mask)
    _check_count(count)
    foreground = torch.flatten(mask != 0).nonzero().squeeze(1)
    if foreground.numel() == 0:
        raise ValueError("mask has no foreground voxels to sample patch centres from")
    picks = torch.randint(foreground.numel(), (count,), generator=generator, device=_device(generator))
    return torch.stack(torch.unravel_index(foreground[picks.to(mask.device)], mask.shape), dim=1)


def discard_background_patches(centers: Tensor, mask: Tensor, patch_size: int) -> Tensor:
    """The ``centers`` (in order) whose ``patch_size``^3 patch holds at least one foreground voxel
    of the (D, H, W) ``mask``.

    A patch centred at c covers indices c - patch_size // 2 ... (as
    :func:`brainkernels.ops.extract_patches3d`); the part outside the volume counts as
    background. The result may be empty when the mask is (nearly) empty.
    """
    _check_mask(mask)
    if centers.dim() != 2 or centers.shape[1] != 3:
        raise ValueError(f"centers must have shape (N, 3) (voxel indices d, h, w); got {tuple(centers.shape)}")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int; got {patch_size!r}")
    foreground = mask != 0
    first = [[c - patch_size // 2 for c in center] for center in centers.tolist()]
    # Stacked before use so that a mask on a GPU costs one synchronisation, not one per patch.
    keep = [foreground[tuple(slice(max(f, 0), max(f + patch_size, 0)) for f in corner)].any() for corner in first]
    return centers[torch.stack(keep).to(centers.device)] if keep else centers


def center_weighted_positions(count: int, generator: torch.Generator | None = None) -> Tensor:
    """(count, 3) float64 normalised patch positions in [-1, 1]: per axis X + Y with
    X ~ U[-1/3, 1/3], Y ~ U[-2/3, 2/3] (density :func:`center_weighted_density`)."""
    _check_count(count)
    device = _device(generator)
    x = torch.rand((count, 3), generator=generator, device=device, dtype=torch.float64)
    y = torch.rand((count, 3), generator=generator, device=device, dtype=torch.float64)
    return (2 * x - 1) / 3 + 2 * (2 * y - 1) / 3


def center_weighted_density(u: Tensor) -> Tensor:
    """Density of one axis of :func:`center_weighted_positions`: 3/4 on |u| <= 1/3, falling
    linearly to 0 at |u| = 1 (9/8 (1 - |u|)), 0 outside [-1, 1]."""
    distance = u.abs()
    return torch.where(distance <= 1 / 3, 0.75, torch.where(distance <= 1, 9 / 8 * (1 - distance), 0.0)).to(u.dtype)


def center_weighted_patch_starts(
    volume_shape: Sequence[int],
    patch_shape: int | Sequence[int],
    count: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(count, 3) first voxels of patches that lie fully inside a (D, H, W) volume, favouring the
    centre (PatchDDM). Position u in [-1, 1] maps to the nearest start in 0 ... N - p (u = -1
    the first admissible start, u = 1 the last)."""
    shape = _spatial_shape(volume_shape, "volume_shape")
    patch = _spatial_shape(
        [patch_shape] * 3 if isinstance(patch_shape, numbers.Integral) else patch_shape, "patch_shape"
    )
    if any(p > n for p, n in zip(patch, shape, strict=True)):
        raise ValueError(f"patch_shape {patch} does not fit inside volume_shape {shape}")
    last_start = torch.tensor(
        [n - p for n, p in zip(shape, patch, strict=True)], dtype=torch.float64, device=_device(generator)
    )
    positions = center_weighted_positions(count, generator)
    return torch.floor((positions + 1) / 2 * last_start + 0.5).long()


def _device(generator: torch.Generator | None) -> torch.device:
    return torch.device("cpu") if generator is None else generator.device


def _spatial_shape(shape: Sequence[int], name: str) -> tuple[int, int, int]:
    shape = tuple(shape)
    if len(shape) != 3 or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1 for n in shape):
        raise ValueError(f"{name} must be three positive ints (D, H, W); got {shape!r}")
    return tuple(int(n) for n in shape)


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
        raise ValueError(f"count must be a non-negative int; got {count!r}")


def _check_mask(mask: Tensor) -> None:
    if not isinstance(mask, Tensor) or mask.dim() != 3:
        raise ValueError(f"mask must be a (D, H, W) tensor; got {getattr(mask, 'shape', type(mask).__name__)}")
