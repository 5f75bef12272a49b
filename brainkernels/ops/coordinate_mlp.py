"""Fused coordinate MLP: the neonatal INR ``f(x, t, l)`` evaluated for many voxels at once.

The network is the one of Bieder et al., "Modeling the Neonatal Brain Development Using Implicit
Neural Representations" (PRIME 2024; thesis ch. 8), laid out as in the paper's code
(FlorentinBieder/Neonatal-Development-INR, ``nn/network.py``):

* input ``z = [t, x_1 .. x_dims, l_1 .. l_latent]`` per voxel: the normalised age, the voxel's
  coordinates and the subject's latent vector (age first, as in the paper's code, whose
  position input is "txyz"; so its checkpoints' first-layer columns load unchanged);
* ``depth`` layers: ``1 + dims + latent -> width``, ``depth - 2`` times ``width -> width``,
  ``width -> 1``; every layer, the last one included, applies its activation;
* activations, with one ``nn.Linear`` per map: WIRE ``cos(omega * freqs(z)) * exp(-(scale *
  scale_map(z))^2)`` (two maps per layer, ``freqs`` and ``scale``), SIREN ``sin(omega *
  linear(z))``, ReLU ``relu(linear(z))``;
* "full residual": a layer whose input and output widths match returns ``(a + z) / 2``, so
  every hidden layer. (The paper's rule would also make the first layer residual when
  ``1 + dims + latent == width`` and the last when ``width == 1``; both are rejected here.)

The paper's 3D configuration (WIRE, width 128, depth 8, latent 128) has
``2 * (132 * 128 + 128) + 6 * 2 * (128 * 128 + 128) + 2 * (128 + 1) = 34,048 + 198,144 + 258
= 232,450`` parameters (2D: 232,194), as its Table 2 reports.

Grid coordinates follow the paper's code too: along an axis of ``n`` voxels, voxel ``i`` has
coordinate ``(i - n / 2) / max(grid_shape)``; the longest axis spans ``[-0.5, 0.5)`` and the
aspect ratio is kept (see :func:`grid_coordinates`). Coordinate ``c`` is array axis ``c``.

The fused op (C++/OpenMP on CPU tensors, Triton on CUDA tensors):

* folds the latent and the age into the first layer's biases once per call,
  ``b' = W_l l + W_t t + b``, so the per-voxel first layer sees only the coordinates;
* makes grid coordinates from the voxel's linear index inside the kernel, or reads explicit
  (M, dims) coordinates;
* runs all layers on a block of voxels in a thread's (program's) scratch and writes only the
  output intensity;
* in the backward pass recomputes each block's forward instead of storing activations, and
  returns the gradients of the parameters, the latent and the age (through the fold, by
  autograd) and of explicit coordinates when they require grad.

Memory. The forward allocates the output and one packed copy of the parameters in the compute
dtype (:func:`packed_size` elements: float32 for float32/bfloat16, float64 for float64), both
visible to :mod:`brainkernels.memory`; nothing is saved for backward but that packed copy (and
explicit coordinates). The backward returns the packed gradient and ``num_partials - 1`` more
packed-sized partial sums (:func:`num_partials`: one per thread on CPU, per streaming
multiprocessor on CUDA), dropped at once; they are summed in a fixed order, so gradients are
deterministic for a given thread count. Inside the op, invisible to the storage tracker, each
thread (program) has a scratch of ``b = block_size`` rounded up to 16 voxels times, in compute
elements, ``dims + 2 * width + maps + 1`` (forward) and ``dims + (depth - 1) * (maps + 1) * width
+ 2 * width + maps + 2`` (backward; Triton: ``(depth - 1) * width``, width padded to a power of
two). Paper network, block 32, float32: 34 KB forward and 378 KB backward per thread. None of
it grows with the number of voxels; only the output and the gradient of explicit coordinates do.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from brainkernels import _extension, backends

ACTIVATIONS = ("wire", "siren", "relu")
DTYPES = (torch.float32, torch.bfloat16, torch.float64)
CPU_BLOCK_SIZE = 32  # voxels a C++ thread evaluates together (backward scratch ~0.4 MB at width 128)
REFERENCE_BLOCK_SIZE = 16384  # voxels per micro-batch of the plain-PyTorch fallback
MAX_BLOCK_SIZE = 1 << 16
_ACTIVATION_CODES = {"wire": 0, "siren": 1, "relu": 2}
_IO_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float64: 2}


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
    shape = [int(n) for n in grid_shape]
    exact = compute_dtype(dtype)
    divisor = max(shape) if shape else 1
    axes = [(torch.arange(n, dtype=exact, device=device) - n / 2) / divisor for n in shape]
    if not shape:
        return torch.zeros(1, 0, dtype=dtype, device=device)
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh, dim=-1).reshape(-1, len(shape)).to(dtype)


# ---------------------------------------------------------------------------------------------
# The plain-PyTorch reference: expand, concatenate, MLP. The test oracle.


def _activation(name: str, pre: list[Tensor], omega: float, scale: float) -> Tensor:
    if name == "wire":
        return torch.cos(omega * pre[0]) * torch.exp(-((scale * pre[1]) ** 2))
    if name == "siren":
        return torch.sin(omega * pre[0])
    return torch.relu(pre[0])


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
    maps = maps_per_layer(activation)
    if isinstance(coords_or_grid_shape, Tensor):
        coords, out_shape = coords_or_grid_shape, (coords_or_grid_shape.shape[0],)
    else:
        out_shape = tuple(int(n) for n in coords_or_grid_shape)
        coords = grid_coordinates(out_shape, latent.dtype, latent.device)
    count = coords.shape[0]
    if isinstance(age, Tensor):
        age_column = age.reshape(1, 1).to(latent.dtype).expand(count, 1)
    else:
        age_column = torch.full((count, 1), float(age), dtype=latent.dtype, device=latent.device)
    z = torch.cat([age_column, coords, latent.reshape(1, -1).expand(count, -1)], dim=1)
    for layer in range(len(weights) // maps):
        index = range(layer * maps, (layer + 1) * maps)
        a = _activation(activation, [F.linear(z, weights[k], biases[k]) for k in index], omega, scale)
        z = (a + z) / 2 if residual and a.shape[1] == z.shape[1] else a
    return z.reshape(out_shape)


# ---------------------------------------------------------------------------------------------
# Validation (errors name the argument).


class _Network(NamedTuple):
    dims: int
    width: int
    depth: int
    latent_size: int
    dtype: torch.dtype
    device: torch.device


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_network(weights: object, biases: object, activation: object, omega: object, scale: object,
                   residual: object, dims: int) -> _Network:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
    for name, value in (("omega", omega), ("scale", scale)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise TypeError(f"{name} must be a finite real number; got {value!r}")
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool; got {type(residual).__name__}")
    for name, value in (("weights", weights), ("biases", biases)):
        if isinstance(value, Tensor) or not isinstance(value, Sequence) or not all(isinstance(t, Tensor) for t in value):
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
    if residual and inputs == width:
        raise ValueError(f"1 + dims + latent_size == width ({width}) would make the first layer residual, which the "
                         "fused kernels do not support; change latent_size or width")
    return _Network(dims, width, depth, latent_size, dtype, device)


def _check_voxels(coords_or_grid_shape: object) -> tuple[Tensor | None, tuple[int, ...], int]:
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


def _check_inputs(coords: Tensor | None, age: object, latent: object, net: _Network) -> None:
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


def _check_block_size(block_size: object) -> int:
    if block_size is None:
        return 0
    if not _is_int(block_size) or not 1 <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be None or an int between 1 and {MAX_BLOCK_SIZE}; got {block_size!r}")
    return int(block_size)


# ---------------------------------------------------------------------------------------------
# Public entry point.


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
    coords, grid_shape, dims = _check_voxels(coords_or_grid_shape)
    net = _check_network(weights, biases, activation, omega, scale, residual, dims)
    _check_inputs(coords, age, latent, net)
    block = _check_block_size(block_size)
    packed = _pack(age, latent, weights, biases, dims, maps_per_layer(activation))
    # Fitting a latent to a fixed network needs no weight gradients: the backward then skips
    # a third of its work.
    weight_grads = torch.is_grad_enabled() and any(w.requires_grad for w in weights)
    return torch.ops.brainkernels.coordinate_mlp(
        packed, coords, list(grid_shape), dims, net.width, net.depth, activation, float(omega), float(scale),
        residual, block, net.dtype, weight_grads,
    )


# ---------------------------------------------------------------------------------------------
# The op and its backends. Backends receive `packed` (contiguous, compute dtype) and a _Spec.


class _Spec(NamedTuple):
    grid_shape: tuple[int, ...]
    dims: int
    width: int
    depth: int
    activation: str
    omega: float
    scale: float
    residual: bool
    block_size: int  # 0: the backend's default
    dtype: torch.dtype
    weight_grads: bool  # backward: also the weight matrices' gradients (else left 0)

    @property
    def maps(self) -> int:
        return maps_per_layer(self.activation)

    def out_shape(self, coords: Tensor | None) -> tuple[int, ...]:
        return tuple(self.grid_shape) if coords is None else (coords.shape[0],)

    def num_voxels(self, coords: Tensor | None) -> int:
        return math.prod(self.out_shape(coords))


def _check_op_arguments(packed: Tensor, coords: Tensor | None, spec: _Spec, grad_out: Tensor | None = None) -> None:
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


def _network_tuple(spec: _Spec) -> tuple:
    return (spec.dims, spec.width, spec.depth, _ACTIVATION_CODES[spec.activation], spec.omega, spec.scale,
            spec.residual)


def _voxels_tuple(spec: _Spec, coords: Tensor | None, block: int) -> tuple:
    if coords is None:
        shape = [1] * (3 - spec.dims) + list(spec.grid_shape)
        divisor = float(max(spec.grid_shape))
        offsets = [n / 2 for n in spec.grid_shape] + [0.0] * (3 - spec.dims)
        return (shape, 0, [0, 0], offsets, [divisor] * 3, _IO_CODES[spec.dtype], block)
    return ([1, 1, coords.shape[0]], coords.data_ptr(), list(coords.stride()), [0.0] * 3, [1.0] * 3,
            _IO_CODES[spec.dtype], block)


def _padded_strides(tensor: Tensor) -> list[int]:
    return [0] * (3 - tensor.dim()) + list(tensor.stride())


def _forward_cpu(packed: Tensor, coords: Tensor | None, spec: _Spec) -> Tensor:
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


def _backward_cpu(grad_out: Tensor, packed: Tensor, coords: Tensor | None, spec: _Spec, coords_grad: bool,
                  num_partials: int) -> tuple[Tensor, Tensor, Tensor]:
    grad_packed, partials = packed.new_empty(packed.shape), packed.new_empty((num_partials - 1, packed.shape[0]))
    grad_coords = _new_grad_coords(coords, spec, coords_grad, packed.device)
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


def _new_grad_coords(coords: Tensor | None, spec: _Spec, coords_grad: bool, device: torch.device) -> Tensor:
    if coords is None or not coords_grad:
        return torch.empty(0, dtype=spec.dtype, device=device)
    return torch.empty((coords.shape[0], spec.dims), dtype=spec.dtype, device=device)


def _forward_triton(packed: Tensor, coords: Tensor | None, spec: _Spec) -> Tensor:
    from brainkernels.triton import coordinate_mlp as triton_kernels

    return triton_kernels.forward(packed, coords, spec)


def _backward_triton(grad_out: Tensor, packed: Tensor, coords: Tensor | None, spec: _Spec, coords_grad: bool,
                     num_partials: int) -> tuple[Tensor, Tensor, Tensor]:
    from brainkernels.triton import coordinate_mlp as triton_kernels

    return triton_kernels.backward(grad_out, packed, coords, spec, coords_grad, num_partials)


def _unpack(packed: Tensor, spec: _Spec) -> list[tuple[Tensor, Tensor]]:
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


def _folded_forward(packed: Tensor, x: Tensor, spec: _Spec) -> Tensor:
    """The network on coordinates only (latent and age already folded into the first biases)."""
    z = x
    for layer, (weight, bias) in enumerate(_unpack(packed, spec)):
        a = _activation(spec.activation, list(F.linear(z, weight, bias).chunk(spec.maps, dim=1)), spec.omega,
                        spec.scale)
        z = (a + z) / 2 if spec.residual and 0 < layer < spec.depth - 1 else a
    return z[:, 0]


def _coordinates(coords: Tensor | None, spec: _Spec, start: int, stop: int, dtype: torch.dtype) -> Tensor:
    if coords is not None:
        return coords[start:stop].to(dtype)
    flat = torch.arange(start, stop)
    axes = []
    for n in reversed(spec.grid_shape):
        axes.append(flat % n)
        flat = flat // n
    divisor = max(spec.grid_shape)
    return torch.stack([(i.to(dtype) - n / 2) / divisor for i, n in zip(reversed(axes), spec.grid_shape)], dim=1)


def _forward_reference(packed: Tensor, coords: Tensor | None, spec: _Spec) -> Tensor:
    out = torch.empty(spec.out_shape(coords), dtype=spec.dtype, device=packed.device)
    flat, step = out.view(-1), spec.block_size or REFERENCE_BLOCK_SIZE
    for start in range(0, flat.shape[0], step):
        stop = min(start + step, flat.shape[0])
        x = _coordinates(coords, spec, start, stop, packed.dtype).to(packed.device)
        flat[start:stop] = _folded_forward(packed, x, spec)
    return out


def _folded_backward(packed: Tensor, x: Tensor, grad: Tensor, spec: _Spec) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`_folded_forward` with respect to `packed` and `x`, by hand: the op's
    implementation runs below autograd, so it cannot call it."""
    layers, inputs, derivatives, z = _unpack(packed, spec), [], [], x
    for layer, (weight, bias) in enumerate(layers):
        pre = F.linear(z, weight, bias).chunk(spec.maps, dim=1)
        a = _activation(spec.activation, list(pre), spec.omega, spec.scale)
        inputs.append(z)
        derivatives.append(_activation_derivatives(spec.activation, pre, spec.omega, spec.scale))
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


def _activation_derivatives(name: str, pre: tuple[Tensor, ...], omega: float, scale: float) -> list[Tensor]:
    if name == "wire":
        f, g = pre
        gauss = torch.exp(-((scale * g) ** 2))
        return [-omega * torch.sin(omega * f) * gauss, -2 * scale**2 * g * torch.cos(omega * f) * gauss]
    if name == "siren":
        return [omega * torch.cos(omega * pre[0])]
    return [(pre[0] > 0).to(pre[0].dtype)]


def _backward_reference(grad_out: Tensor, packed: Tensor, coords: Tensor | None, spec: _Spec, coords_grad: bool,
                        num_partials: int) -> tuple[Tensor, Tensor, Tensor]:
    grad_packed, partials = packed.new_zeros(packed.shape), packed.new_zeros((num_partials - 1, packed.shape[0]))
    grad_coords = _new_grad_coords(coords, spec, coords_grad, packed.device)
    grad_flat, step = grad_out.reshape(-1), spec.block_size or REFERENCE_BLOCK_SIZE
    for start in range(0, grad_flat.shape[0], step):
        stop = min(start + step, grad_flat.shape[0])
        x = _coordinates(coords, spec, start, stop, packed.dtype).to(packed.device)
        chunk_packed, chunk_coords = _folded_backward(packed, x, grad_flat[start:stop].to(packed.dtype), spec)
        grad_packed += chunk_packed
        if coords_grad:
            grad_coords[start:stop] = chunk_coords
    if not spec.weight_grads:
        for weight, _ in _unpack(grad_packed, spec):
            weight.zero_()
    return grad_packed, partials, grad_coords


_FORWARD = {"cpu": _forward_cpu, "triton": _forward_triton, "reference": _forward_reference}
_BACKWARD = {"cpu": _backward_cpu, "triton": _backward_triton, "reference": _backward_reference}


def _spec(grid_shape, dims, width, depth, activation, omega, scale, residual, block_size, dtype,
          weight_grads) -> _Spec:
    return _Spec(tuple(grid_shape), dims, width, depth, activation, omega, scale, residual, block_size, dtype,
                 weight_grads)


@torch.library.custom_op("brainkernels::coordinate_mlp", mutates_args=())
def _coordinate_mlp(
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


@_coordinate_mlp.register_fake
def _(packed, coords, grid_shape, dims, width, depth, activation, omega, scale, residual, block_size, dtype,
      weight_grads):
    shape = tuple(grid_shape) if coords is None else (coords.shape[0],)
    return packed.new_empty(shape, dtype=dtype)


@torch.library.custom_op("brainkernels::coordinate_mlp_backward", mutates_args=())
def _coordinate_mlp_backward(
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


@_coordinate_mlp_backward.register_fake
def _(grad_out, packed, coords, grid_shape, dims, width, depth, activation, omega, scale, residual, block_size, dtype,
      weight_grads, coords_grad, num_partials):
    grad_packed, partials = packed.new_empty(packed.shape), packed.new_empty((num_partials - 1, packed.shape[0]))
    if coords is not None and coords_grad:
        return grad_packed, partials, coords.new_empty((coords.shape[0], dims), dtype=dtype)
    return grad_packed, partials, packed.new_empty(0, dtype=dtype)


def num_partials(device: torch.device, num_voxels: int, block_size: int = 0) -> int:
    """Gradient partials the backward pass keeps: one per thread on CPU (and on meta, which
    predicts CPU), one per streaming multiprocessor on CUDA; never more than there are blocks."""
    blocks = max(1, math.ceil(num_voxels / (block_size or CPU_BLOCK_SIZE)))
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
    grad_packed, _, grad_coords = _coordinate_mlp_backward(
        grad_out, packed, coords, grid_shape, dims, width, depth, activation, omega, scale, residual, block_size,
        dtype, weight_grads, coords_grad, num_partials(packed.device, voxels, block_size),
    )
    return (grad_packed, grad_coords if coords_grad else None) + (None,) * 11


_coordinate_mlp.register_autograd(_backward, setup_context=_setup_context)
