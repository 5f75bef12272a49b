"""The neonatal INR's coordinate MLP as modules: :class:`CoordinateMLP` runs the fused op,
:class:`ReferenceCoordinateMLP` is the same network in plain PyTorch (``nn.Linear`` layers, as the
paper's code). Both have the same parameters and ``state_dict`` keys (``layers.{i}.freqs.*`` and
``layers.{i}.scale.*`` for WIRE, ``layers.{i}.linear.*`` otherwise; the keys of the paper's
``Network.layers``), so weights load in both directions, and from the paper's checkpoints.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from brainkernels.ops.coordinate_mlp import coordinate_mlp
from brainkernels.ops.coordinate_mlp.checks import check_first_layer, check_hyperparameters
from brainkernels.ops.coordinate_mlp.reference import activate, expanded_mlp, voxel_coordinates


class CoordinateMLPLayer(nn.Module):
    """One layer ``act(maps(z))``: WIRE ``cos(omega * freqs(z)) * exp(-(scale_0 * scale(z))^2)``
    with two ``nn.Linear`` maps ``freqs`` and ``scale``; SIREN ``sin(omega * linear(z))`` and
    ReLU ``relu(linear(z))`` with one, ``linear``. Initialisation as in the paper's code: PyTorch's
    default, except SIREN weights ``U(-sqrt(6 / in) / omega, sqrt(6 / in) / omega)``."""

    def __init__(self, in_features: int, out_features: int, activation: str = "wire", omega: float = 10.0,
                 scale: float = 10.0, *, device=None, dtype=None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.in_features, self.out_features = in_features, out_features
        self.activation, self.omega_0, self.scale_0 = activation, float(omega), float(scale)
        if activation == "wire":
            self.freqs = nn.Linear(in_features, out_features, **factory)
            self.scale = nn.Linear(in_features, out_features, **factory)
        else:
            self.linear = nn.Linear(in_features, out_features, **factory)
            if activation == "siren":
                bound = math.sqrt(6 / in_features) / self.omega_0
                with torch.no_grad():
                    self.linear.weight.uniform_(-bound, bound)

    def linears(self) -> list[nn.Linear]:
        """The layer's linear maps in the fused op's order."""
        return [self.freqs, self.scale] if self.activation == "wire" else [self.linear]

    def forward(self, z: Tensor) -> Tensor:
        return activate(self.activation, [linear(z) for linear in self.linears()], self.omega_0, self.scale_0)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, activation={self.activation!r}"


def _positive_int(name: str, value: object, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


class _CoordinateMLPLayers(nn.Module):
    """The layers and hyper-parameters the two modules share."""

    def __init__(self, dims: int = 3, latent_size: int = 128, width: int = 128, depth: int = 8,
                 activation: str = "wire", omega: float = 10.0, scale: float = 10.0, residual: bool = True, *,
                 device=None, dtype=None) -> None:
        super().__init__()
        if dims not in (2, 3) or isinstance(dims, bool):
            raise ValueError(f"dims must be 2 or 3; got {dims!r}")
        latent_size = _positive_int("latent_size", latent_size, 0)
        width = _positive_int("width", width, 2)
        depth = _positive_int("depth", depth, 2)
        check_hyperparameters(activation, omega, scale, residual)
        inputs = 1 + dims + latent_size
        check_first_layer(inputs, width, residual)
        self.dims, self.latent_size, self.width, self.depth = dims, latent_size, width, depth
        self.activation, self.omega, self.scale, self.residual = activation, float(omega), float(scale), residual
        sizes = [inputs] + [width] * (depth - 1) + [1]
        self.layers = nn.ModuleList(
            CoordinateMLPLayer(sizes[k], sizes[k + 1], activation, omega, scale, device=device, dtype=dtype)
            for k in range(depth)
        )

    def weights_and_biases(self) -> tuple[list[Tensor], list[Tensor]]:
        """Weights and biases of every linear map, in layer order (the fused op's arguments)."""
        linears = [linear for layer in self.layers for linear in layer.linears()]
        return [linear.weight for linear in linears], [linear.bias for linear in linears]

    def extra_repr(self) -> str:
        return (f"dims={self.dims}, latent_size={self.latent_size}, width={self.width}, depth={self.depth}, "
                f"activation={self.activation!r}, omega={self.omega}, scale={self.scale}, residual={self.residual}")


class CoordinateMLP(_CoordinateMLPLayers):
    """The paper's INR ``f(x, t, l)`` on the fused op :func:`brainkernels.ops.coordinate_mlp`.

    ``CoordinateMLP()`` is the paper's 3D network: WIRE, width 128, depth 8, latent 128,
    omega = scale = 10, full residual; 232,450 parameters.

    ``forward(coords_or_grid_shape, age, latent, block_size=None)``: a grid shape (coordinates made
    in the kernel, the paper's normalisation) or (M, dims) coordinates, a normalised age (float
    or scalar tensor) and a (latent_size,) latent; returns ``grid_shape`` or ``(M,)``. Memory
    other than the output does not grow with the number of voxels, also in training.
    """

    def forward(self, coords_or_grid_shape: Tensor | Sequence[int], age: Tensor | float, latent: Tensor,
                block_size: int | None = None) -> Tensor:
        weights, biases = self.weights_and_biases()
        return coordinate_mlp(coords_or_grid_shape, age, latent, weights, biases, activation=self.activation,
                              omega=self.omega, scale=self.scale, residual=self.residual, block_size=block_size)


class ReferenceCoordinateMLP(_CoordinateMLPLayers):
    """The same network in plain PyTorch, as the paper's code runs it: the latent and the age
    are expanded to every voxel and concatenated with the coordinates (``[t, coords, latent]``),
    and autograd stores every layer's activations.

    ``forward`` as :class:`CoordinateMLP`; ``block_size`` evaluates micro-batches of that many
    voxels one after the other, which bounds memory without autograd (the paper's inference);
    with autograd every micro-batch's activations are still kept until backward.
    """

    def forward(self, coords_or_grid_shape: Tensor | Sequence[int], age: Tensor | float, latent: Tensor,
                block_size: int | None = None) -> Tensor:
        coords, out_shape = voxel_coordinates(coords_or_grid_shape, latent.dtype, latent.device)
        step = block_size or max(coords.shape[0], 1)
        outputs = [self._mlp(coords[start:start + step], age, latent) for start in range(0, coords.shape[0], step)]
        out = torch.cat(outputs) if outputs else coords.new_empty(0)
        return out.reshape(out_shape)

    def _mlp(self, coords: Tensor, age: Tensor | float, latent: Tensor) -> Tensor:
        weights, biases = self.weights_and_biases()
        return expanded_mlp(coords, age, latent, weights, biases, self.activation, self.omega, self.scale,
                            self.residual)
