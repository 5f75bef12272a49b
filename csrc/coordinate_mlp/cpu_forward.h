// The coordinate MLP's forward pass over one block of voxels (CPU).
#pragma once
#include <algorithm>

#include "coordinate_mlp/coordinate_mlp.h"
#include "coordinate_mlp/cpu_layers.h"

namespace brainkernels {
namespace cpu {
namespace mlp {

// Forward: x (dims x bp) | two activation buffers (width x bp) | last layer (maps + 1 x bp)

inline int64_t forward_scratch(const CoordinateMlpArgs& a) {
  return (a.dims + 2 * a.width + maps_of(a.activation) + 1) * padded(a.block);
}

template <class T, class IO, int Bytes>
BK_INLINE void forward_block(const CoordinateMlpArgs& a, const Net<T>& n, int64_t start, int64_t count, IO* out,
                             T* scratch) {
  const int64_t bp = padded(count), W = n.width;
  T* x = scratch;
  T* h = x + n.dims * bp;
  T* next = h + W * bp;
  T* y = next + W * bp;
  load_coordinates<T, IO>(a, start, count, bp, x);
  dense_layer<T, Bytes>(a, n.first_weight, n.first_bias, n.dims, W, x, bp, h, false, nullptr);
  for (int64_t layer = 1; layer + 1 < n.depth; ++layer) {
    const T* w = hidden_weight<T>(n, layer);
    dense_layer<T, Bytes>(a, w, w + n.units * W, W, W, h, bp, next, a.residual, nullptr);
    std::swap(h, next);
  }
  last_layer<T, Bytes>(n, h, bp, y);
  last_activation<T, Bytes>(a, y, bp, y + n.maps * bp, false);
  const T* result = y + n.maps * bp;
  for (int64_t i = 0; i < count; ++i) io_store<T>(out + start + i, result[i]);
}

}  // namespace mlp
}  // namespace cpu
}  // namespace brainkernels
