"""The checks of coordinate_mlp()'s arguments, and of the modules' hyper-parameters that are also
the op's, in one place. Errors name the argument and follow docs/ops.md: ``TypeError`` for a
wrong Python type or dtype, ``ValueError`` for a wrong value, shape or device."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from brainkernels.specs.coordinate_mlp import ACTIVATIONS, DTYPES, maps_per_layer

MAX_BLOCK_SIZE = 1 << 16


class Network(NamedTuple):
    dims: int
    width: int
    depth: int
    latent_size: int
    dtype: torch.dtype
    device: torch.device


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_hyperparameters(activation: object, omega: object, scale: object, residual: object) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
    for name, value in (("omega", omega), ("scale", scale)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a finite real number; got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite real number; got {value!r}")
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool; got {type(residual).__name__}")


def check_first_layer(inputs: int, width: int, residual: bool) -> None:
    if residual and inputs == width:
        raise ValueError(f"1 + dims + latent_size == width ({width}) would make the first layer residual, which the "
                         "fused kernels do not support; change latent_size or width")


def check_network(weights: object, biases: object, activation: object, omega: object, scale: object,
                  residual: object, dims: int) -> Network:
    check_hyperparameters(activation, omega, scale, residual)
    for name, value in (("weights", weights), ("biases", biases)):
        if (isinstance(value, Tensor) or not isinstance(value, Sequence)
                or not all(isinstance(t, Tensor) for t in value)):
            raise TypeError(f"{name} must be a sequence of tensors (one per linear map, in layer order)")
    maps = maps_per_layer(activation)
    if len(weights) != len(biases):
        raise ValueError(f"weights and biases must have one entry per linear map; got {len(weights)} and {len(biases)}")
    if len(weights) % maps or len(weights) < 2 * maps:
        raise ValueError(f"weights must hold {maps} linear map(s) per layer for {activation} and at least 2 layers; "
                         f"got {len(weights)} tensors")
    depth = len(weights) // maps
    first = weights[0]
    if first.dim() != 2:
        raise ValueError(f"weights[0] must be a (width, 1 + dims + latent_size) matrix; got shape {tuple(first.shape)}")
    width, inputs = first.shape
    latent_size = inputs - 1 - dims
    if latent_size < 0:
        raise ValueError(f"weights[0] has {inputs} input columns, fewer than 1 (age) + {dims} (dims)")
    if width < 2:
        raise ValueError(f"the network width (rows of weights[0]) must be at least 2; got {width}")
    dtype, device = first.dtype, first.device
    if dtype not in DTYPES:
        raise TypeError(f"weights must be float32, bfloat16 or float64; got {dtype}")
    for k, (w, b) in enumerate(zip(weights, biases)):
        layer = k // maps
        rows = 1 if layer == depth - 1 else width
        cols = inputs if layer == 0 else width
        if tuple(w.shape) != (rows, cols):
            raise ValueError(f"weights[{k}] (layer {layer}) must have shape {(rows, cols)}; got {tuple(w.shape)}")
        if tuple(b.shape) != (rows,):
            raise ValueError(f"biases[{k}] (layer {layer}) must have shape {(rows,)}; got {tuple(b.shape)}")
        for name, t in ((f"weights[{k}]", w), (f"biases[{k}]", b)):
            if t.dtype != dtype:
                raise TypeError(f"{name} is {t.dtype} but weights[0] is {dtype}; use one dtype for all parameters")
            if t.device != device:
                raise ValueError(f"{name} is on {t.device} but weights[0] is on {device}; put them on one device")
    check_first_layer(inputs, width, residual)
    return Network(dims, width, depth, latent_size, dtype, device)


def check_voxels(coords_or_grid_shape: object) -> tuple[Tensor | None, tuple[int, ...], int]:
    """(coords or None, grid shape or (), dims)."""
    if isinstance(coords_or_grid_shape, Tensor):
        coords = coords_or_grid_shape
        if coords.dim() != 2 or coords.shape[1] not in (2, 3):
            raise ValueError(f"coords must have shape (M, dims) with dims 2 or 3; got {tuple(coords.shape)}")
        return coords, (), coords.shape[1]
    if isinstance(coords_or_grid_shape, (str, bytes)) or not isinstance(coords_or_grid_shape, Sequence):
        raise TypeError("coords_or_grid_shape must be an (M, dims) tensor of coordinates or a grid shape (a sequence "
                        f"of 2 or 3 ints); got {type(coords_or_grid_shape).__name__}")
    shape = tuple(coords_or_grid_shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"grid_shape must have 2 or 3 dimensions (dims 2 or 3); got {shape}")
    if not all(_is_int(n) for n in shape) or not all(n >= 1 for n in shape):
        raise ValueError(f"grid_shape must hold positive ints; got {shape}")
    return None, tuple(int(n) for n in shape), len(shape)


def check_inputs(coords: Tensor | None, age: object, latent: object, net: Network) -> None:
    if not isinstance(latent, Tensor):
        raise TypeError(f"latent must be a torch.Tensor; got {type(latent).__name__}")
    if latent.dim() != 1 or latent.shape[0] != net.latent_size:
        raise ValueError(f"latent must have shape ({net.latent_size},) (the first layer's 1 + {net.dims} + "
                         f"latent_size inputs); got {tuple(latent.shape)}")
    if latent.dtype != net.dtype:
        raise TypeError(f"latent is {latent.dtype} but the parameters are {net.dtype}")
    if latent.device != net.device:
        raise ValueError(f"latent is on {latent.device} but the parameters are on {net.device}")
    if coords is not None:
        if coords.dtype != net.dtype:
            raise TypeError(f"coords are {coords.dtype} but the parameters are {net.dtype}")
        if coords.device != net.device:
            raise ValueError(f"coords are on {coords.device} but the parameters are on {net.device}")
    if isinstance(age, Tensor):
        if age.numel() != 1 or age.dim() > 1:
            raise ValueError(f"age must be a scalar (one normalised age per call); got shape {tuple(age.shape)}")
        if not age.is_floating_point():
            raise TypeError(f"age must be a floating-point tensor or a float; got {age.dtype}")
        if age.device != net.device:
            raise ValueError(f"age is on {age.device} but the parameters are on {net.device}")
        if age.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(torch.isfinite(age).all()):
            raise ValueError("age is NaN or infinite")
    elif isinstance(age, bool) or not isinstance(age, numbers.Real):
        raise TypeError(f"age must be a float or a scalar tensor; got {type(age).__name__}")
    elif not math.isfinite(age):
        raise ValueError(f"age must be finite; got {age}")


def check_block_size(block_size: object) -> int:
    if block_size is None:
        return 0
    if not _is_int(block_size) or not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be None or an int between 1 and {MAX_BLOCK_SIZE}; got {block_size!r}")
    return int(block_size)
