// Plain-data bridge between the bindings and the C++ kernels of brainkernels::coordinate_mlp,
// the fused per-voxel MLP of the neonatal INR (see brainkernels/ops/coordinate_mlp/).
#pragma once
#include <cstdint>

#include "common/dtype.h"

namespace brainkernels {

enum CoordinateMlpActivation : int32_t { kWire = 0, kSiren = 1, kRelu = 2 };

// The network, with m = 2 linear maps per layer for WIRE (freqs, scale) and 1 otherwise:
//   layer 0          dims  -> width   (the latent and the age are folded into its bias)
//   layers 1..L-2    width -> width   (residual averaging (h + a) / 2 when `residual`)
//   layer L-1        width -> 1
// `packed` stores, layer after layer, the rows of the m maps' weights one map after the other
// (row-major, out x in, as nn.Linear keeps them), then their biases:
//   [W0 (m*width x dims), b0 (m*width)], [Wl (m*width x width), bl (m*width)] x (L-2),
//   [WL (m x width), bL (m)].
// The gradient partials use the same layout. Biases always get their gradient (the folded
// first-layer biases carry the latent's and the age's); weight matrices only with weight_grads.
struct CoordinateMlpArgs {
  int64_t dims;   // 2 or 3
  int64_t width;  // >= 2
  int64_t depth;  // >= 2
  int32_t activation;
  double omega;  // WIRE/SIREN frequency
  double scale;  // WIRE Gaussian scale
  bool residual;
  const void* packed;

  // Voxels: `num_voxels` = shape[0] * shape[1] * shape[2], C order. Grid mode (coords ==
  // nullptr): coordinate c of voxel (i0, i1, i2) is (i_a - grid_offset[c]) / grid_divisor[c]
  // with axis a = 3 - dims + c (2D grids have shape[0] == 1). Point mode: shape is
  // (1, 1, M) and coordinate c of voxel i is coords[i * coords_stride[0] + c * coords_stride[1]].
  int64_t num_voxels;
  int64_t shape[3];
  const void* coords;
  int64_t coords_stride[2];
  double grid_offset[3];
  double grid_divisor[3];
  // Element type of the per-voxel tensors (coordinates, output, its gradient, coordinate
  // gradient): float32 and bfloat16 compute in float, float64 in double; `packed` holds the
  // compute type.
  Dtype io;
  int64_t block;      // voxels per block (a thread's unit of work)
  bool weight_grads;  // backward: also the weight matrices' gradients (else left 0: fitting a latent)
};

namespace cpu {

int64_t coordinate_mlp_packed_size(int64_t dims, int64_t width, int64_t depth, int32_t activation);

// Elements (of the compute type) of one thread's scratch for the forward or the backward pass.
int64_t coordinate_mlp_scratch_elements(const CoordinateMlpArgs& args, bool backward);

// out: contiguous, num_voxels elements of the io type. scratch: num_threads scratch slots.
void coordinate_mlp_forward(const CoordinateMlpArgs& args, void* out, void* scratch, int num_threads);

// grad_out: io type, addressed by voxel multi-index through grad_strides (one per shape axis).
// grad_packed (packed size) and partials ((num_partials - 1) x packed size), of the compute type,
// are written entirely: partial p (grad_packed for p = 0) accumulates a fixed contiguous range
// of voxel blocks, then grad_packed += partials[1], partials[2], ... in that order, so the
// result depends on num_partials but not on the scheduling.
// grad_coords: nullptr, or contiguous (M, dims) of the io type. scratch: num_partials slots.
void coordinate_mlp_backward(const CoordinateMlpArgs& args, const void* grad_out, const int64_t grad_strides[3],
                             void* grad_packed, void* partials, int64_t num_partials, void* grad_coords,
                             void* scratch);

}  // namespace cpu
}  // namespace brainkernels
