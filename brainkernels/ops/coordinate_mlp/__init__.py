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

# One job per module (docs/ops.md, "Source"). No import loops: each imports only modules after it
# in the order api, checks, op, cpu, reference_backend, (brainkernels.triton.coordinate_mlp),
# reference, spec.

from brainkernels.ops.coordinate_mlp.api import coordinate_mlp
from brainkernels.ops.coordinate_mlp.checks import MAX_BLOCK_SIZE
from brainkernels.ops.coordinate_mlp.cpu import CPU_BLOCK_SIZE
from brainkernels.ops.coordinate_mlp.op import num_partials
from brainkernels.ops.coordinate_mlp.reference import coordinate_mlp_reference
from brainkernels.ops.coordinate_mlp.reference_backend import REFERENCE_BLOCK_SIZE
from brainkernels.specs.coordinate_mlp import (
    ACTIVATIONS,
    DTYPES,
    compute_dtype,
    grid_coordinates,
    grid_coordinates_at,
    maps_per_layer,
    packed_size,
)

__all__ = [
    "ACTIVATIONS",
    "CPU_BLOCK_SIZE",
    "DTYPES",
    "MAX_BLOCK_SIZE",
    "REFERENCE_BLOCK_SIZE",
    "compute_dtype",
    "coordinate_mlp",
    "coordinate_mlp_reference",
    "grid_coordinates",
    "grid_coordinates_at",
    "maps_per_layer",
    "num_partials",
    "packed_size",
]
