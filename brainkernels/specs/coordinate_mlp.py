"""What every backend of brainkernels::coordinate_mlp agrees on: the activation codes, the packed
layout's size, the compute dtype, the op's arguments as one :class:`Spec`, and the voxel
geometry (grid coordinates and the :class:`Geometry` the kernels make them from)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

# The kernels' activation numbers (csrc/coordinate_mlp/coordinate_mlp.h, the Triton ACT).
ACTIVATION_CODES = {"wire": 0, "siren": 1, "relu": 2}
ACTIVATIONS = tuple(ACTIVATION_CODES)
DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def maps_per_layer(activation: str) -> int:
    """Linear maps per layer: WIRE has two (``freqs``, ``scale``), SIREN and ReLU one."""
    return 2 if activation == "wire" else 1


def packed_size(dims: int, width: int, depth: int, activation: str) -> int:
    """Elements of the packed parameters the kernels read (coordinate columns and folded biases
    of the first layer, then every other layer's weights and biases)."""
    maps = maps_per_layer(activation)
    units = maps * width
    return units * dims + units + (depth - 2) * (units * width + units) + maps * width + maps


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 computes in float64; float32 and bfloat16 in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def grid_coordinates(grid_shape: Sequence[int], dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """(prod(grid_shape), len(grid_shape)) coordinates of a grid's voxels in C order, the paper's
    normalisation: along an axis of ``n`` voxels, voxel ``i`` is at ``(i - n / 2) / max(grid_shape)``.

    Computed in float32 (float64 for float64) and then cast, exactly as the kernels compute them:
    use it to sample voxels for explicit-coordinate calls (``grid_coordinates(shape)[indices]``).
    """
    shape = tuple(int(n) for n in grid_shape)
    if not shape:
        return torch.zeros(1, 0, dtype=dtype, device=device)
    return grid_coordinates_between(shape, 0, math.prod(shape), dtype, device)


def grid_coordinates_between(grid_shape: tuple[int, ...], start: int, stop: int, dtype: torch.dtype,
                             device=None) -> Tensor:
    """Rows ``start:stop`` of :func:`grid_coordinates`, in ``dtype``, made from the voxels' linear
    indices as the kernels make them (so a micro-batch needs no coordinates of the whole grid)."""
    return _coordinates_of(grid_shape, torch.arange(start, stop, device=device), dtype)


def grid_coordinates_at(grid_shape: Sequence[int], indices: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``grid_coordinates(grid_shape, dtype)[indices]`` for a 1D integer tensor of linear (C
    order) voxel indices, without the coordinates of the whole grid (a random sample of a 256^3
    grid: no 200 MB table)."""
    grid_shape = tuple(int(n) for n in grid_shape)
    if not grid_shape or min(grid_shape) < 0:
        raise ValueError(f"grid_shape must have at least one axis and no negative size; got {grid_shape}")
    if not isinstance(indices, Tensor) or indices.dim() != 1 or indices.is_floating_point() or indices.is_complex():
        raise TypeError(f"indices must be a 1D integer tensor of linear voxel indices; got "
                        f"{indices.dtype if isinstance(indices, Tensor) else type(indices).__name__} "
                        f"of shape {tuple(getattr(indices, 'shape', ()))}")
    total = math.prod(grid_shape)
    has_values = indices.numel() and indices.device.type != "meta"
    if has_values and (int(indices.min()) < 0 or int(indices.max()) >= total):
        raise IndexError(f"indices must lie in [0, {total}) for grid_shape {grid_shape}; got values from "
                         f"{int(indices.min())} to {int(indices.max())}")
    return _coordinates_of(grid_shape, indices.long(), dtype)


def _coordinates_of(grid_shape: tuple[int, ...], flat: Tensor, dtype: torch.dtype) -> Tensor:
    exact, indices = compute_dtype(dtype), []
    for n in reversed(grid_shape):
        indices.append(flat % n)
        flat = flat // n
    divisor = max(grid_shape)
    return torch.stack([(i.to(exact) - n / 2) / divisor for i, n in zip(reversed(indices), grid_shape)],
                       dim=1).to(dtype)


class Spec(NamedTuple):
    """The op's non-tensor arguments, as every backend receives them."""

    grid_shape: tuple[int, ...]  # () with explicit coordinates
    dims: int
    width: int
    depth: int
    activation: str
    omega: float
    scale: float
    residual: bool
    block_size: int  # 0: the backend's default
    dtype: torch.dtype  # of the coordinates and the output; `packed` holds compute_dtype(dtype)
    weight_grads: bool  # backward: also the weight matrices' gradients (else left 0)

    @property
    def maps(self) -> int:
        return maps_per_layer(self.activation)

    @property
    def activation_code(self) -> int:
        return ACTIVATION_CODES[self.activation]

    def out_shape(self, coords: Tensor | None) -> tuple[int, ...]:
        return tuple(self.grid_shape) if coords is None else (coords.shape[0],)

    def num_voxels(self, coords: Tensor | None) -> int:
        return math.prod(self.out_shape(coords))


class Geometry(NamedTuple):
    """How a kernel finds voxel ``i``'s coordinates. Grid: ``i`` is a C-order index into
    ``shape`` (the grid with leading 1s to three axes) and coordinate ``c`` of voxel
    ``(i0, i1, i2)`` is ``(i_{3 - dims + c} - offsets[c]) / divisor``. Explicit coordinates:
    ``shape`` is ``(1, 1, M)`` and coordinate ``c`` is read at ``i * strides[0] + c * strides[1]``."""

    shape: tuple[int, int, int]
    offsets: tuple[float, float, float]
    divisor: float
    strides: tuple[int, int]


def geometry(spec: Spec, coords: Tensor | None) -> Geometry:
    if coords is None:
        padding = 3 - spec.dims
        return Geometry((1,) * padding + spec.grid_shape, tuple(n / 2 for n in spec.grid_shape) + (0.0,) * padding,
                        float(max(spec.grid_shape)), (0, 0))
    return Geometry((1, 1, coords.shape[0]), (0.0, 0.0, 0.0), 1.0, tuple(coords.stride()))


def empty_grad_coords(spec: Spec, coords: Tensor | None, coords_grad: bool, device: torch.device) -> Tensor:
    """The backward's coordinate gradient, (M, dims) when ``coords_grad``, else empty."""
    if coords is None or not coords_grad:
        return torch.empty(0, dtype=spec.dtype, device=device)
    return torch.empty((coords.shape[0], spec.dims), dtype=spec.dtype, device=device)
