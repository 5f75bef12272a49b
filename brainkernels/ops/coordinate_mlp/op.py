"""brainkernels::coordinate_mlp and its backward as custom ops: their fake implementations, the
autograd formula, and the choice of backend. Backends receive `packed` (contiguous, compute
dtype) and a :class:`Spec`."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from brainkernels import backends
from brainkernels.ops.coordinate_mlp import cpu, reference_backend
from brainkernels.specs.coordinate_mlp import Spec, compute_dtype, packed_size


def _check_op_arguments(packed: Tensor, coords: Tensor | None, spec: Spec, grad_out: Tensor | None = None) -> None:
    """The op's own contract (coordinate_mlp() checks the user's arguments): the kernels index
    `packed`, `coords` and the output gradient by these sizes, so they must agree."""
    expected = packed_size(spec.dims, spec.width, spec.depth, spec.activation)
    if packed.dim() != 1 or packed.shape[0] != expected or packed.dtype != compute_dtype(spec.dtype):
        raise ValueError(f"packed must be ({expected},) {compute_dtype(spec.dtype)}; got {tuple(packed.shape)} "
                         f"{packed.dtype}")
    if coords is None and (len(spec.grid_shape) != spec.dims or min(spec.grid_shape, default=0) < 1):
        raise ValueError(f"grid_shape must hold {spec.dims} positive sizes; got {list(spec.grid_shape)}")
    if coords is not None and (coords.dim() != 2 or coords.shape[1] != spec.dims or coords.dtype != spec.dtype):
        raise ValueError(f"coords must be (M, {spec.dims}) {spec.dtype}; got {tuple(coords.shape)} {coords.dtype}")
    if grad_out is not None and tuple(grad_out.shape) != spec.out_shape(coords):
        raise ValueError(f"grad_out must have shape {spec.out_shape(coords)}; got {tuple(grad_out.shape)}")


def _forward_triton(packed: Tensor, coords: Tensor | None, spec: Spec) -> Tensor:
    from brainkernels.triton import coordinate_mlp as triton_kernels

    return triton_kernels.forward(packed, coords, spec)


def _backward_triton(grad_out: Tensor, packed: Tensor, coords: Tensor | None, spec: Spec, coords_grad: bool,
                     num_partials: int) -> tuple[Tensor, Tensor, Tensor]:
    from brainkernels.triton import coordinate_mlp as triton_kernels

    return triton_kernels.backward(grad_out, packed, coords, spec, coords_grad, num_partials)


_FORWARD = {"cpu": cpu.forward, "triton": _forward_triton, "reference": reference_backend.forward}
_BACKWARD = {"cpu": cpu.backward, "triton": _backward_triton, "reference": reference_backend.backward}


def _spec(grid_shape, dims, width, depth, activation, omega, scale, residual, block_size, dtype,
          weight_grads) -> Spec:
    return Spec(tuple(grid_shape), dims, width, depth, activation, omega, scale, residual, block_size, dtype,
                weight_grads)


@torch.library.custom_op("brainkernels::coordinate_mlp", mutates_args=())
def coordinate_mlp_op(
    packed: Tensor, coords: Tensor | None, grid_shape: list[int], dims: int, width: int, depth: int, activation: str,
    omega: float, scale: float, residual: bool, block_size: int, dtype: torch.dtype, weight_grads: bool,
) -> Tensor:
    """Op form of :func:`coordinate_mlp` on packed parameters (see :func:`packed_size`).
    coords None: evaluate the grid ``grid_shape``; otherwise coords are (M, dims) in ``dtype``.
    weight_grads False: the gradient of ``packed`` is left 0 in the weight matrices (the
    biases, and with them the latent and the age, always get theirs)."""
    spec = _spec(grid_shape, dims, width, depth, activation, omega, scale, residual, block_size, dtype,
                 weight_grads)
    _check_op_arguments(packed, coords, spec)
    backend = backends.resolve(packed.device, tuple(_FORWARD))
    return _FORWARD[backend](packed.contiguous(), coords, spec)


@coordinate_mlp_op.register_fake
def _(packed, coords, grid_shape, dims, width, depth, activation, omega, scale, residual, block_size, dtype,
      weight_grads):
    shape = tuple(grid_shape) if coords is None else (coords.shape[0],)
    return packed.new_empty(shape, dtype=dtype)


@torch.library.custom_op("brainkernels::coordinate_mlp_backward", mutates_args=())
def coordinate_mlp_backward_op(
    grad_out: Tensor, packed: Tensor, coords: Tensor | None, grid_shape: list[int], dims: int, width: int, depth: int,
    activation: str, omega: float, scale: float, residual: bool, block_size: int, dtype: torch.dtype,
    weight_grads: bool, coords_grad: bool, num_partials: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of brainkernels::coordinate_mlp: ``(grad_packed, partials, grad_coords)``.
    grad_packed is the gradient of ``packed``, the sum of ``num_partials`` per-thread (per-program)
    partial sums in a fixed order; ``partials`` returns the other ``num_partials - 1`` of them
    (so the memory they take is visible; callers drop them). grad_coords is (M, dims) when
    ``coords_grad``, else empty."""
    spec = _spec(grid_shape, dims, width, depth, activation, omega, scale, residual, block_size, dtype,
                 weight_grads)
    _check_op_arguments(packed, coords, spec, grad_out)
    if num_partials < 1:
        raise ValueError(f"num_partials must be at least 1; got {num_partials}")
    backend = backends.resolve(packed.device, tuple(_BACKWARD))
    return _BACKWARD[backend](grad_out.to(dtype), packed.contiguous(), coords, spec, coords_grad, num_partials)


@coordinate_mlp_backward_op.register_fake
def _(grad_out, packed, coords, grid_shape, dims, width, depth, activation, omega, scale, residual, block_size, dtype,
      weight_grads, coords_grad, num_partials):
    grad_packed, partials = packed.new_empty(packed.shape), packed.new_empty((num_partials - 1, packed.shape[0]))
    if coords is not None and coords_grad:
        return grad_packed, partials, coords.new_empty((coords.shape[0], dims), dtype=dtype)
    return grad_packed, partials, packed.new_empty(0, dtype=dtype)


def num_partials(device: torch.device, num_voxels: int, block_size: int = 0) -> int:
    """Gradient partials the backward pass keeps: one per thread on CPU (and on meta, which
    predicts CPU), one per streaming multiprocessor on CUDA; never more than there are blocks."""
    blocks = max(1, math.ceil(num_voxels / (block_size or cpu.CPU_BLOCK_SIZE)))
    if device.type == "cuda":
        cap = torch.cuda.get_device_properties(device).multi_processor_count
    else:
        cap = torch.get_num_threads()
    return max(1, min(blocks, cap))


def _setup_context(ctx, inputs, output) -> None:
    packed, coords, grid_shape, *rest = inputs
    ctx.save_for_backward(packed, coords)
    ctx.arguments = (list(grid_shape), *rest)


def _backward(ctx, grad_out: Tensor):
    packed, coords = ctx.saved_tensors
    grid_shape, dims, width, depth, activation, omega, scale, residual, block_size, dtype, weight_grads = ctx.arguments
    coords_grad = coords is not None and ctx.needs_input_grad[1]
    voxels = coords.shape[0] if coords is not None else math.prod(grid_shape)
    grad_packed, _, grad_coords = coordinate_mlp_backward_op(
        grad_out, packed, coords, grid_shape, dims, width, depth, activation, omega, scale, residual, block_size,
        dtype, weight_grads, coords_grad, num_partials(packed.device, voxels, block_size),
    )
    return (grad_packed, grad_coords if coords_grad else None) + (None,) * 11


coordinate_mlp_op.register_autograd(_backward, setup_context=_setup_context)
