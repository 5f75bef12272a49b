"""The network in plain PyTorch, as the paper's code runs it: expand the latent and the age to every
voxel, concatenate ``[t, coords, latent]``, run the MLP, storing activations as autograd does.
The test oracle, and the one place in Python that writes the activations' formulas
(:class:`brainkernels.nn.ReferenceCoordinateMLP` and the reference backend call them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from brainkernels.specs.coordinate_mlp import grid_coordinates, maps_per_layer


def activate(name: str, pre: Sequence[Tensor], omega: float, scale: float) -> Tensor:
    """A layer's output from its maps' pre-activations: WIRE ``cos(omega * pre[0]) *
    exp(-(scale * pre[1])^2)``, SIREN ``sin(omega * pre[0])``, ReLU ``relu(pre[0])``."""
    if name == "wire":
        return torch.cos(omega * pre[0]) * torch.exp(-((scale * pre[1]) ** 2))
    if name == "siren":
        return torch.sin(omega * pre[0])
    return torch.relu(pre[0])


def activation_derivatives(name: str, pre: Sequence[Tensor], omega: float, scale: float) -> list[Tensor]:
    """The derivatives of :func:`activate` by each pre-activation."""
    if name == "wire":
        f, g = pre
        gauss = torch.exp(-((scale * g) ** 2))
        return [-omega * torch.sin(omega * f) * gauss, -2 * scale**2 * g * torch.cos(omega * f) * gauss]
    if name == "siren":
        return [omega * torch.cos(omega * pre[0])]
    return [(pre[0] > 0).to(pre[0].dtype)]


def voxel_coordinates(coords_or_grid_shape: Tensor | Sequence[int], dtype: torch.dtype,
                      device) -> tuple[Tensor, tuple[int, ...]]:
    """(M, dims) coordinates and the output's shape: ``grid_shape`` or ``(M,)``."""
    if isinstance(coords_or_grid_shape, Tensor):
        return coords_or_grid_shape, (coords_or_grid_shape.shape[0],)
    out_shape = tuple(int(n) for n in coords_or_grid_shape)
    return grid_coordinates(out_shape, dtype, device), out_shape


def expanded_mlp(coords: Tensor, age: Tensor | float, latent: Tensor, weights: Sequence[Tensor],
                 biases: Sequence[Tensor], activation: str, omega: float, scale: float, residual: bool) -> Tensor:
    """(M,) outputs at (M, dims) coordinates: ``[t, coords, latent]`` per voxel through the layers.
    A layer is residual where its input and output widths match, the paper's rule."""
    count = coords.shape[0]
    if isinstance(age, Tensor):
        age_column = age.reshape(1, 1).to(latent.dtype).expand(count, 1)
    else:
        age_column = torch.full((count, 1), float(age), dtype=latent.dtype, device=latent.device)
    z = torch.cat([age_column, coords, latent.reshape(1, -1).expand(count, -1)], dim=1)
    maps = maps_per_layer(activation)
    for layer in range(len(weights) // maps):
        index = range(layer * maps, (layer + 1) * maps)
        a = activate(activation, [F.linear(z, weights[k], biases[k]) for k in index], omega, scale)
        z = (a + z) / 2 if residual and a.shape[1] == z.shape[1] else a
    return z[:, 0]


def coordinate_mlp_reference(
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
) -> Tensor:
    """Plain PyTorch, as the paper's code runs it: expand the latent and the age to every voxel,
    concatenate ``[t, coords, latent]`` and run the MLP, storing activations as autograd does.

    Arguments as for :func:`coordinate_mlp`. Returns ``grid_shape`` or ``(M,)``.
    """
    coords, out_shape = voxel_coordinates(coords_or_grid_shape, latent.dtype, latent.device)
    return expanded_mlp(coords, age, latent, weights, biases, activation, omega, scale, residual).reshape(out_shape)
