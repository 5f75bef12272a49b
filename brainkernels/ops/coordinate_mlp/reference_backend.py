"""The ``reference`` backend of brainkernels::coordinate_mlp: the folded network (latent and age
already in the first biases) in plain PyTorch, in micro-batches below autograd, so that like
the kernels it keeps nothing per voxel. Its backward is written by hand: the op's
implementation runs below autograd, so it cannot call it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from brainkernels.ops.coordinate_mlp.reference import activate, activation_derivatives
from brainkernels.specs.coordinate_mlp import Spec, empty_grad_coords, grid_coordinates_between

REFERENCE_BLOCK_SIZE = 16384  # voxels per micro-batch


def _unpack(packed: Tensor, spec: Spec) -> list[tuple[Tensor, Tensor]]:
    """(weight, bias) per layer, views of `packed`; weight rows are the maps' units one map after another."""
    units, layers, offset = spec.maps * spec.width, [], 0
    for layer in range(spec.depth):
        rows = spec.maps if layer == spec.depth - 1 else units
        cols = spec.dims if layer == 0 else spec.width
        weight = packed[offset:offset + rows * cols].view(rows, cols)
        offset += rows * cols
        layers.append((weight, packed[offset:offset + rows]))
        offset += rows
    return layers


def _coordinates(coords: Tensor | None, spec: Spec, start: int, stop: int, packed: Tensor) -> Tensor:
    if coords is not None:
        return coords[start:stop].to(packed.dtype)
    return grid_coordinates_between(spec.grid_shape, start, stop, packed.dtype, packed.device)


def _folded_forward(packed: Tensor, x: Tensor, spec: Spec) -> Tensor:
    """The network on coordinates only (latent and age already folded into the first biases)."""
    z = x
    for layer, (weight, bias) in enumerate(_unpack(packed, spec)):
        a = activate(spec.activation, F.linear(z, weight, bias).chunk(spec.maps, dim=1), spec.omega, spec.scale)
        z = (a + z) / 2 if spec.residual and 0 < layer < spec.depth - 1 else a
    return z[:, 0]


def _folded_backward(packed: Tensor, x: Tensor, grad: Tensor, spec: Spec) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`_folded_forward` with respect to `packed` and `x`."""
    layers, inputs, derivatives, z = _unpack(packed, spec), [], [], x
    for layer, (weight, bias) in enumerate(layers):
        pre = F.linear(z, weight, bias).chunk(spec.maps, dim=1)
        a = activate(spec.activation, pre, spec.omega, spec.scale)
        inputs.append(z)
        derivatives.append(activation_derivatives(spec.activation, pre, spec.omega, spec.scale))
        z = (a + z) / 2 if spec.residual and 0 < layer < spec.depth - 1 else a
    grad_packed, upstream = [], grad[:, None]
    for layer in reversed(range(spec.depth)):
        weight, _ = layers[layer]
        skip = spec.residual and 0 < layer < spec.depth - 1
        if skip:
            upstream = upstream / 2
        dy = torch.cat([upstream * d for d in derivatives[layer]], dim=1)
        grad_packed[:0] = [(dy.t() @ inputs[layer]).reshape(-1), dy.sum(0)]
        upstream = dy @ weight + (upstream if skip else 0)
    return torch.cat(grad_packed), upstream


def forward(packed: Tensor, coords: Tensor | None, spec: Spec) -> Tensor:
    out = torch.empty(spec.out_shape(coords), dtype=spec.dtype, device=packed.device)
    flat, step = out.view(-1), spec.block_size or REFERENCE_BLOCK_SIZE
    for start in range(0, flat.shape[0], step):
        stop = min(start + step, flat.shape[0])
        flat[start:stop] = _folded_forward(packed, _coordinates(coords, spec, start, stop, packed), spec)
    return out


def backward(grad_out: Tensor, packed: Tensor, coords: Tensor | None, spec: Spec, coords_grad: bool,
             num_partials: int) -> tuple[Tensor, Tensor, Tensor]:
    grad_packed, partials = packed.new_zeros(packed.shape), packed.new_zeros((num_partials - 1, packed.shape[0]))
    grad_coords = empty_grad_coords(spec, coords, coords_grad, packed.device)
    grad_flat, step = grad_out.reshape(-1), spec.block_size or REFERENCE_BLOCK_SIZE
    for start in range(0, grad_flat.shape[0], step):
        stop = min(start + step, grad_flat.shape[0])
        x = _coordinates(coords, spec, start, stop, packed)
        chunk_packed, chunk_coords = _folded_backward(packed, x, grad_flat[start:stop].to(packed.dtype), spec)
        grad_packed += chunk_packed
        if coords_grad:
            grad_coords[start:stop] = chunk_coords
    if not spec.weight_grads:
        for weight, _ in _unpack(grad_packed, spec):
            weight.zero_()
    return grad_packed, partials, grad_coords
