"""The ``cpu`` backend of brainkernels::coordinate_mlp: marshalling for the C++/OpenMP kernels
(csrc/coordinate_mlp/), which take raw pointers and plain-data tuples; every buffer,
the threads' scratch included, is allocated here with torch."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from brainkernels import _extension
from brainkernels.specs.coordinate_mlp import Spec, empty_grad_coords, geometry

CPU_BLOCK_SIZE = 32  # voxels a C++ thread evaluates together (backward scratch ~0.4 MB at width 128)


def _network_tuple(spec: Spec) -> tuple:
    return spec.dims, spec.width, spec.depth, spec.activation_code, spec.omega, spec.scale, spec.residual


def _voxels_tuple(spec: Spec, coords: Tensor | None, block: int) -> tuple:
    where = geometry(spec, coords)
    return (list(where.shape), 0 if coords is None else coords.data_ptr(), list(where.strides), list(where.offsets),
            [where.divisor] * 3, _extension.dtype_code(spec.dtype), block)


def _padded_strides(tensor: Tensor) -> list[int]:
    return [0] * (3 - tensor.dim()) + list(tensor.stride())


def forward(packed: Tensor, coords: Tensor | None, spec: Spec) -> Tensor:
    out = torch.empty(spec.out_shape(coords), dtype=spec.dtype, device=packed.device)
    if out.numel() == 0:
        return out
    block = spec.block_size or CPU_BLOCK_SIZE
    threads = max(1, min(torch.get_num_threads(), math.ceil(out.numel() / block)))
    kernels = _extension.load()
    network, voxels = _network_tuple(spec), _voxels_tuple(spec, coords, block)
    scratch = packed.new_empty(threads * kernels.coordinate_mlp_scratch_elements(network, voxels, False))
    kernels.coordinate_mlp_forward_cpu(network, packed.data_ptr(), voxels, out.data_ptr(), scratch.data_ptr(), threads)
    return out


def backward(grad_out: Tensor, packed: Tensor, coords: Tensor | None, spec: Spec, coords_grad: bool,
             num_partials: int) -> tuple[Tensor, Tensor, Tensor]:
    grad_packed, partials = packed.new_empty(packed.shape), packed.new_empty((num_partials - 1, packed.shape[0]))
    grad_coords = empty_grad_coords(spec, coords, coords_grad, packed.device)
    if spec.num_voxels(coords) == 0:
        return grad_packed.zero_(), partials.zero_(), grad_coords
    block = spec.block_size or CPU_BLOCK_SIZE
    kernels = _extension.load()
    network, voxels = _network_tuple(spec), _voxels_tuple(spec, coords, block)
    scratch = packed.new_empty(num_partials * kernels.coordinate_mlp_scratch_elements(network, voxels, True))
    kernels.coordinate_mlp_backward_cpu(
        network, packed.data_ptr(), voxels, spec.weight_grads, grad_out.data_ptr(), _padded_strides(grad_out),
        grad_packed.data_ptr(), partials.data_ptr(), num_partials, grad_coords.data_ptr() if coords_grad else 0,
        scratch.data_ptr(),
    )
    return grad_packed, partials, grad_coords
