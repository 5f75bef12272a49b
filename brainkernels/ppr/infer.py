"""PPR anomaly maps: the position error E_x = ||x - f(p_x)|| at every voxel, and the displacement
f(p_x) - x whose length it is.

``dense`` evaluates the fully convolutional rewrite tile by tile (memory bounded by the tile,
not the volume); ``patchwise`` is the paper's procedure, one network evaluation per patch,
in chunks. Both give the same map.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from brainkernels.ops import extract_patches3d
from brainkernels.ppr.model import PPRNet

Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS = ("auto", "float32", "bfloat16")
Layout = Literal["channels_last", "contiguous"]


def normalised_positions(centers: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Voxel indices (N, 3) -> positions in [0, 1]^3, the regression target."""
    extent = torch.tensor([max(size - 1, 1) for size in shape], dtype=torch.float32, device=centers.device)
    return centers.float() / extent


def _grid_centers(grid: list[int], stride: int, start: int, stop: int, device: torch.device) -> Tensor:
    """Centres number ``start`` to ``stop`` of the grid of every ``stride``-th voxel, (n, 3) int64.

    Made chunk by chunk: a whole 256^3 grid of int64 centres alone would take 400 MB.
    """
    index = torch.arange(start, stop, device=device)
    return torch.stack(torch.unravel_index(index, grid), dim=1) * stride


@torch.no_grad()
def predict_patchwise(model: PPRNet, volume: Tensor, *, stride: int = 1, chunk: int = 2048,
                      padding_value: float = 0.0) -> Tensor:
    """(3, D', H', W') predicted positions of the patches centred every ``stride`` voxels."""
    if stride < 1 or chunk < 1:
        raise ValueError(f"stride and chunk must be at least 1; got stride={stride}, chunk={chunk}")
    grid = [len(range(0, size, stride)) for size in volume.shape[1:]]
    output = volume.new_empty((3, grid[0] * grid[1] * grid[2]))
    for start in range(0, output.shape[1], chunk):
        stop = min(start + chunk, output.shape[1])
        centers = _grid_centers(grid, stride, start, stop, volume.device)
        output[:, start:stop] = model(extract_patches3d(volume, centers, model.patch, padding_value)).T
    return output.reshape(3, *grid)


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), where bf16 convolutions
    run about twice as fast as float32; elsewhere they are emulated and slower."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: Precision, device: torch.device) -> torch.dtype:
    """The compute dtype of the dense pass: ``auto`` is bfloat16 on a CPU with native bfloat16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cpu" and native_bfloat16() else torch.float32
    if precision == "bfloat16" and device.type == "cpu" and not native_bfloat16():
        warnings.warn("precision 'bfloat16' on a CPU without native bfloat16 (AVX512-BF16 or AMX): it is emulated "
                      "and runs many times slower than float32 (precision 'auto' picks float32 here)", stacklevel=2)
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


@torch.no_grad()
def predict_dense(model: PPRNet, volume: Tensor, *, tile: int = 32, padding_value: float = 0.0,
                  precision: Precision = "float32", layout: Layout | None = None) -> Tensor:
    """(3, D, H, W) predicted positions of the patches centred at every voxel, one tile at a time.

    ``precision``: the dtype the network computes in (bfloat16 through autocast; ``auto``: see
    :func:`resolve_precision`). ``layout``: see ``PPRNet.forward_dense``; by default channels-last
    on a CPU, where it is faster, and the contiguous one elsewhere (measured on GPUs).
    """
    if tile < 1:
        raise ValueError(f"tile must be at least 1; got {tile}")
    dtype = resolve_precision(precision, volume.device)
    layout = layout or ("channels_last" if volume.device.type == "cpu" else "contiguous")
    # (autocast refuses the meta device even when disabled)
    autocast = torch.autocast(volume.device.type, dtype) if dtype != torch.float32 else contextlib.nullcontext()
    shape = tuple(volume.shape[1:])
    patch, half = model.patch, model.patch // 2
    output = volume.new_empty((3, *shape))
    for z in range(0, shape[0], tile):
        for y in range(0, shape[1], tile):
            for x in range(0, shape[2], tile):
                extent = [min(tile, size - start) for size, start in zip(shape, (z, y, x))]
                # The tile's input with its halo, read by the patch kernel so the volume border is
                # padded exactly as the patches of the patchwise mode are.
                region_size = tile + patch - 1
                region_start = torch.tensor([[z - half, y - half, x - half]], device=volume.device)
                region = extract_patches3d(volume, region_start + region_size // 2, region_size, padding_value)
                with autocast:
                    predicted = model.forward_dense(region, layout)[0]
                output[:, z:z + extent[0], y:y + extent[1], x:x + extent[2]] = \
                    predicted[:, :extent[0], :extent[1], :extent[2]]
    return output


def _displacement(model: PPRNet, volume: Tensor, mode: str, tile: int, stride: int, chunk: int,
                  padding_value: float, precision: Precision) -> tuple[Tensor, int]:
    """(3, D', H', W') predicted minus true position of every evaluated patch, and the stride."""
    if volume.dim() != 4 or volume.shape[0] != model.channels:
        raise ValueError(f"volume must have shape ({model.channels}, D, H, W) for this model; "
                         f"got {tuple(volume.shape)}")
    if mode not in ("dense", "patchwise"):
        raise ValueError(f"mode must be 'dense' or 'patchwise'; got {mode!r}")
    model.eval()
    if mode == "dense":
        predicted = predict_dense(model, volume, tile=tile, padding_value=padding_value, precision=precision)
        stride = 1
    else:
        predicted = predict_patchwise(model, volume, stride=stride, chunk=chunk, padding_value=padding_value)
    for axis, size in enumerate(volume.shape[1:]):
        # The true position of each evaluated voxel along this axis, broadcast over the others.
        position = torch.arange(0, size, stride, device=volume.device, dtype=predicted.dtype) / max(size - 1, 1)
        predicted[axis] -= position.view([-1 if a == axis else 1 for a in range(3)])
    return predicted, stride


def _full_grid(evaluated: Tensor, shape: tuple[int, ...], stride: int) -> Tensor:
    """(C, *shape) from the values at every ``stride``-th voxel: those voxels keep their values,
    trilinear between them, and voxels past the last evaluated one along an axis take its value.
    (Interpolating straight to ``shape`` would stretch the evaluated grid whenever ``stride`` does
    not divide the size minus one: at 256 voxels and stride 8, by 7 voxels at the far edge.)"""
    if stride == 1:
        return evaluated
    spanned = [(count - 1) * stride + 1 for count in evaluated.shape[1:]]
    interpolated = F.interpolate(evaluated[None], size=spanned, mode="trilinear", align_corners=True)
    padding = [amount for size, span in zip(reversed(shape), reversed(spanned)) for amount in (0, size - span)]
    return F.pad(interpolated, padding, mode="replicate")[0]


def displacement_map(model: PPRNet, volume: Tensor, *, mode: Literal["dense", "patchwise"] = "dense",
                     tile: int = 32, stride: int = 1, chunk: int = 2048, padding_value: float = 0.0,
                     precision: Precision = "float32") -> Tensor:
    """(3, D, H, W) f(p_x) - x at every voxel of a (C, D, H, W) volume: where the network places the
    patch centred there, relative to where it is (normalised positions, as the regression target).
    Its length is :func:`anomaly_map`; the healthy reference measures each axis on its own.
    Options as for :func:`anomaly_map` (with a stride, each axis is interpolated)."""
    evaluated, stride = _displacement(model, volume, mode, tile, stride, chunk, padding_value, precision)
    return _full_grid(evaluated, tuple(volume.shape[1:]), stride)


def anomaly_map(model: PPRNet, volume: Tensor, *, mode: Literal["dense", "patchwise"] = "dense", tile: int = 32,
                stride: int = 1, chunk: int = 2048, padding_value: float = 0.0,
                precision: Precision = "float32") -> Tensor:
    """(D, H, W) position error at every voxel of a (C, D, H, W) volume.

    ``precision`` applies to the dense mode (see :func:`predict_dense`).

    With ``patchwise`` and ``stride`` > 1 only every stride-th patch is evaluated and the error
    map is interpolated (trilinear) to the full grid, as in the paper's reduced-resolution runs.
    """
    evaluated, stride = _displacement(model, volume, mode, tile, stride, chunk, padding_value, precision)
    return _full_grid(evaluated.norm(dim=0, keepdim=True), tuple(volume.shape[1:]), stride)[0]
