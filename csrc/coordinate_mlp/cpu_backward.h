// The coordinate MLP's backward pass over one block of voxels (CPU).
#pragma once
#include <algorithm>

#include "coordinate_mlp/coordinate_mlp.h"
#include "coordinate_mlp/cpu_layers.h"
#include "coordinate_mlp/cpu_tiles.h"

namespace brainkernels {
namespace cpu {
namespace mlp {

// Backward: recompute the block's forward keeping each layer's input and activation
// derivative, then walk back. Scratch:
//   inputs   x (dims x bp), h_1 .. h_{L-1} (width x bp each)
//   derivs   d_0 .. d_{L-2} (units x bp each), d_{L-1} (maps x bp)
//   grad     (width x bp), transposed input (bp x width), output gradient (bp), output (bp)

inline int64_t backward_scratch(const CoordinateMlpArgs& a) {
  const int64_t maps = maps_of(a.activation), units = maps * a.width, L = a.depth;
  return (a.dims + (L - 1) * a.width + (L - 1) * units + maps + 2 * a.width + 2) * padded(a.block);
}

// Sums over the block's real voxels (the first `count` of a padded row).
template <class T>
BK_INLINE T sum_prefix(const T* row, int64_t count) {
  T sum = 0;
  for (int64_t i = 0; i < count; ++i) sum += row[i];
  return sum;
}

template <class T>
BK_INLINE T dot_prefix(const T* a, const T* b, int64_t count) {
  T sum = 0;
  for (int64_t i = 0; i < count; ++i) sum += a[i] * b[i];
  return sum;
}

// dy (units x bp) holds activation derivatives; times the gradient of each unit's output, which
// all maps of unit u % width share, it becomes the pre-activation gradient.
template <class T>
BK_INLINE void times_unit_gradient(T* dy, const T* grad, int64_t units, int64_t width, int64_t bp) {
  for (int64_t u = 0; u < units; ++u) {
    const T* gu = grad + (u % width) * bp;
    T* row = dy + u * bp;
    for (int64_t i = 0; i < bp; ++i) row[i] *= gu[i];
  }
}

template <class T, class IO, int Bytes>
BK_INLINE void backward_block(const CoordinateMlpArgs& a, const Net<T>& n, const Net<T>& g, int64_t start,
                              int64_t count, const IO* grad_out, const int64_t* grad_strides, IO* grad_coords,
                              T* scratch) {
  const int64_t bp = padded(count), W = n.width, U = n.units, L = n.depth, d = n.dims;
  T* x = scratch;
  T* hs = x + d * bp;                // h_l at hs + (l - 1) * W * bp, l = 1 .. L-1
  T* ds = hs + (L - 1) * W * bp;     // d_l at ds + l * U * bp, l = 0 .. L-2
  T* d_last = ds + (L - 1) * U * bp;  // maps x bp
  T* grad = d_last + n.maps * bp;    // W x bp
  T* transposed = grad + W * bp;     // bp x W
  T* g_out = transposed + W * bp;    // bp
  T* out = g_out + bp;               // bp (unused forward output)
  auto h_at = [&](int64_t l) { return l == 0 ? x : hs + (l - 1) * W * bp; };
  auto d_at = [&](int64_t l) { return ds + l * U * bp; };

  load_coordinates<T, IO>(a, start, count, bp, x);
  dense_layer<T, Bytes>(a, n.first_weight, n.first_bias, d, W, x, bp, h_at(1), false, d_at(0));
  for (int64_t l = 1; l + 1 < L; ++l) {
    const T* w = hidden_weight<T>(n, l);
    dense_layer<T, Bytes>(a, w, w + U * W, W, W, h_at(l), bp, h_at(l + 1), a.residual, d_at(l));
  }
  last_layer<T, Bytes>(n, h_at(L - 1), bp, d_last);
  last_activation<T, Bytes>(a, d_last, bp, out, true);

  std::fill(g_out, g_out + bp, T(0));
  int64_t index[3] = {start / (a.shape[1] * a.shape[2]), (start / a.shape[2]) % a.shape[1], start % a.shape[2]};
  for (int64_t i = 0; i < count; ++i) {
    g_out[i] = io_load<T>(grad_out + index[0] * grad_strides[0] + index[1] * grad_strides[1] +
                          index[2] * grad_strides[2]);
    if (++index[2] == a.shape[2]) {
      index[2] = 0;
      if (++index[1] == a.shape[1]) {
        index[1] = 0;
        ++index[0];
      }
    }
  }

  // Last layer (width -> 1): the maps' pre-activation gradients, then the gradient of h_{L-1}.
  const T* h_prev = h_at(L - 1);
  T* last_w_grad = const_cast<T*>(g.last_weight);
  T* last_b_grad = const_cast<T*>(g.last_bias);
  for (int64_t j = 0; j < n.maps; ++j) {
    T* dy = d_last + j * bp;
    for (int64_t i = 0; i < bp; ++i) dy[i] *= g_out[i];
    for (int64_t k = 0; k < W && a.weight_grads; ++k) last_w_grad[j * W + k] += dot_prefix(dy, h_prev + k * bp, count);
    last_b_grad[j] += sum_prefix(dy, count);
  }
  for (int64_t k = 0; k < W; ++k) {
    T* gk = grad + k * bp;
    for (int64_t i = 0; i < bp; ++i) gk[i] = T(0);
    for (int64_t j = 0; j < n.maps; ++j) {
      const T w = n.last_weight[j * W + k];
      const T* dy = d_last + j * bp;
      for (int64_t i = 0; i < bp; ++i) gk[i] += w * dy[i];
    }
  }

  // Hidden layers, last to first.
  for (int64_t l = L - 2; l >= 1; --l) {
    if (a.residual) {
      for (int64_t e = 0; e < W * bp; ++e) grad[e] *= T(0.5);
    }
    T* dy = d_at(l);
    times_unit_gradient(dy, grad, U, W, bp);
    T* w_grad = const_cast<T*>(g.hidden + (l - 1) * g.hidden_stride);
    T* b_grad = w_grad + U * W;
    if (a.weight_grads) {
      const T* h = h_at(l);
      for (int64_t k = 0; k < W; ++k) {
        for (int64_t i = 0; i < count; ++i) transposed[i * W + k] = h[k * bp + i];
      }
      gemm<T, Bytes>(U, W, count, dy, bp, 1, transposed, W, w_grad, W, true);
    }
    for (int64_t u = 0; u < U; ++u) b_grad[u] += sum_prefix(dy + u * bp, count);
    // grad <- [grad / 2 +] W^T dy
    const T* w = n.hidden + (l - 1) * n.hidden_stride;
    gemm<T, Bytes>(W, bp, U, w, 1, W, dy, bp, grad, bp, a.residual);
  }

  // First layer (dims -> width): coordinate weights, folded bias and coordinates.
  T* dy = d_at(0);
  times_unit_gradient(dy, grad, U, W, bp);
  T* first_w_grad = const_cast<T*>(g.first_weight);
  T* first_b_grad = const_cast<T*>(g.first_bias);
  for (int64_t u = 0; u < U; ++u) {
    const T* row = dy + u * bp;
    for (int64_t c = 0; c < d && a.weight_grads; ++c) first_w_grad[u * d + c] += dot_prefix(row, x + c * bp, count);
    first_b_grad[u] += sum_prefix(row, count);
  }
  if (grad_coords != nullptr) {
    for (int64_t c = 0; c < d; ++c) {
      T* acc = grad;  // reuse: the gradient of h_1 is no longer needed
      for (int64_t i = 0; i < count; ++i) acc[i] = T(0);
      for (int64_t u = 0; u < U; ++u) {
        const T w = n.first_weight[u * d + c];
        const T* row = dy + u * bp;
        for (int64_t i = 0; i < count; ++i) acc[i] += w * row[i];
      }
      for (int64_t i = 0; i < count; ++i) io_store<T>(grad_coords + (start + i) * d + c, acc[i]);
    }
  }
}

}  // namespace mlp
}  // namespace cpu
}  // namespace brainkernels
