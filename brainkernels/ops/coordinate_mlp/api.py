"""coordinate_mlp(), the public entry point: checks the user's arguments, folds the latent and
the age into the packed parameters (differentiably) and calls the op."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from brainkernels.ops.coordinate_mlp.checks import check_block_size, check_inputs, check_network, check_voxels
from brainkernels.ops.coordinate_mlp.op import coordinate_mlp_op
from brainkernels.specs.coordinate_mlp import compute_dtype, maps_per_layer


def _pack(age: Tensor | float, latent: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], dims: int,
          maps: int) -> Tensor:
    """The kernels' packed parameters, differentiable: the fold ``b' = b + W_t t + W_l l`` and
    the layout of :func:`packed_size`, in plain PyTorch so autograd carries the gradient of the
    packed buffer back to the parameters, the latent and the age."""
    exact = compute_dtype(weights[0].dtype)
    if isinstance(age, Tensor):
        age = age.reshape(()).to(exact)
    latent = latent.to(exact)
    pieces = [w[:, 1:1 + dims].reshape(-1) for w in weights[:maps]]
    for w, b in zip(weights[:maps], biases[:maps]):
        pieces.append(torch.addmv(b.to(exact) + w[:, 0].to(exact) * age, w[:, 1 + dims:].to(exact), latent))
    for layer in range(1, len(weights) // maps):
        pieces.extend(w.reshape(-1) for w in weights[layer * maps:(layer + 1) * maps])
        pieces.extend(biases[layer * maps:(layer + 1) * maps])
    # cat promotes bfloat16 weights to the float32 of the folded biases in its one allocation.
    return torch.cat(pieces).to(exact)


def coordinate_mlp(
    coords_or_grid_shape: Tensor | Sequence[int],
    age: Tensor | float,
    latent: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    *,
    activation: str = "wire",
    omega: float = 10.0,
    scale: float = 10.0,
    residual: bool = True,
    block_size: int | None = None,
) -> Tensor:
    """Evaluate the INR ``f(x, t, l)`` at every voxel of a grid or at explicit coordinates.

    Args:
        coords_or_grid_shape: a grid shape ``(D, H, W)`` or ``(H, W)`` (coordinates are made in
            the kernel, see :func:`grid_coordinates`), or an (M, dims) tensor of coordinates
            (dims 2 or 3, any strides, the parameters' dtype; differentiable).
        age: the normalised age ``t``, a float or a scalar floating tensor (differentiable).
        latent: (latent_size,) latent vector ``l`` (differentiable).
        weights, biases: the ``nn.Linear`` weights and biases, one per linear map in layer order
            (WIRE: ``freqs`` then ``scale`` of each layer); layer 0 is (width, 1 + dims +
            latent_size) with columns ``[t, coords, latent]``, the last layer (1, width).
            float32, bfloat16 or float64, all one dtype, on one device (differentiable).
        activation: ``"wire"``, ``"siren"`` or ``"relu"``.
        omega: frequency of WIRE and SIREN. scale: WIRE's Gaussian scale.
        residual: average each hidden layer's output with its input, ``(a + z) / 2``.
        block_size: voxels evaluated together per thread (C++) or program (Triton, rounded to a
            power of two in [16, 128]) or per micro-batch (reference fallback); None: the
            backend's default. Memory other than the output grows with it, never with M.

    Returns:
        A tensor of ``grid_shape`` or ``(M,)`` in the parameters' dtype. bfloat16 computes in
        float32 and rounds once at the output.
    """
    coords, grid_shape, dims = check_voxels(coords_or_grid_shape)
    net = check_network(weights, biases, activation, omega, scale, residual, dims)
    check_inputs(coords, age, latent, net)
    block = check_block_size(block_size)
    packed = _pack(age, latent, weights, biases, dims, maps_per_layer(activation))
    # Fitting a latent to a fixed network needs no weight gradients: the backward then skips
    # a third of its work.
    weight_grads = torch.is_grad_enabled() and any(w.requires_grad for w in weights)
    return coordinate_mlp_op(
        packed, coords, list(grid_shape), dims, net.width, net.depth, activation, float(omega), float(scale),
        residual, block, net.dtype, weight_grads,
    )
