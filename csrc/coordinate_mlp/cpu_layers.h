// The coordinate MLP's network on one block of voxels: the packed parameters as pointers, the
// voxels' coordinates, each layer with its activation applied while its product sits in cache,
// and the output unit. Matrices are unit-major with `bp` (the padded block width) columns.
#pragma once
#include <algorithm>

#include "common/cpu_simd.h"
#include "coordinate_mlp/coordinate_mlp.h"
#include "coordinate_mlp/cpu_math.h"
#include "coordinate_mlp/cpu_tiles.h"

namespace brainkernels {
namespace cpu {
namespace mlp {

// Block widths are padded to a multiple of this (a multiple of every micro-tile width), so
// the forward and the recomputation run on whole vectors; padded voxels have coordinate 0,
// receive zero output gradient and are never written or summed.
constexpr int64_t kPad = 32;

inline int64_t maps_of(int32_t activation) { return activation == kWire ? 2 : 1; }

inline int64_t padded(int64_t count) { return (count + kPad - 1) / kPad * kPad; }

// Element conversion of the per-voxel tensors (bfloat16 travels as its bits).
template <class T>
BK_INLINE T io_load(const float* p) { return static_cast<T>(*p); }
template <class T>
BK_INLINE T io_load(const double* p) { return static_cast<T>(*p); }
template <class T>
BK_INLINE T io_load(const uint16_t* p) { return static_cast<T>(bfloat16_to_float(*p)); }
template <class T>
BK_INLINE void io_store(float* p, T v) { *p = static_cast<float>(v); }
template <class T>
BK_INLINE void io_store(double* p, T v) { *p = static_cast<double>(v); }
template <class T>
BK_INLINE void io_store(uint16_t* p, T v) { *p = float_to_bfloat16(static_cast<float>(v)); }

// The network as pointers into `packed` (or into a gradient row of the same layout).

template <class T>
struct Net {
  int64_t dims, width, depth, maps, units;  // units = maps * width
  const T* first_weight;                    // (units x dims)
  const T* first_bias;                      // (units)
  const T* hidden;                          // layer l at hidden + (l - 1) * hidden_stride
  int64_t hidden_stride;
  const T* last_weight;  // (maps x width)
  const T* last_bias;    // (maps)
};

inline int64_t packed_size(int64_t dims, int64_t width, int64_t depth, int64_t maps) {
  const int64_t units = maps * width;
  return units * dims + units + (depth - 2) * (units * width + units) + maps * width + maps;
}

template <class T>
Net<T> net_at(const CoordinateMlpArgs& a, const T* base) {
  Net<T> n;
  n.dims = a.dims;
  n.width = a.width;
  n.depth = a.depth;
  n.maps = maps_of(a.activation);
  n.units = n.maps * n.width;
  n.first_weight = base;
  n.first_bias = base + n.units * n.dims;
  n.hidden = n.first_bias + n.units;
  n.hidden_stride = n.units * n.width + n.units;
  n.last_weight = n.hidden + (n.depth - 2) * n.hidden_stride;
  n.last_bias = n.last_weight + n.maps * n.width;
  return n;
}

template <class T>
BK_INLINE const T* hidden_weight(const Net<T>& n, int64_t layer) {
  return n.hidden + (layer - 1) * n.hidden_stride;
}


// One layer on a block: out (width x bp) = act(weight . in + bias), averaged with `in` when
// `residual`; with `derivative` (units x bp, the maps' rows one map after another) != nullptr,
// the activation's derivatives too. `in` is (K x bp). The activation runs on each tile while it
// is in cache, so the pre-activations never make a pass through memory.
template <class T, int Bytes, int Kind, bool Derivative>
BK_INLINE void dense_layer_as(const CoordinateMlpArgs& a, const T* weight, const T* bias, int64_t K, int64_t width,
                              const T* in, int64_t bp, T* out, bool residual, T* derivative) {
  using V = typename Vec<T, Bytes>::type;
  constexpr int L = Vec<T, Bytes>::lanes;
  constexpr int NR = 2 * L;
  constexpr int maps = Kind == kWire ? 2 : 1;
  constexpr int per_tile = kRows / maps;
  const T omega = static_cast<T>(a.omega), scale = static_cast<T>(a.scale);
  alignas(64) T buffer[kRows * NR];
  for (int64_t j = 0; j < bp; j += NR) {
    for (int64_t u0 = 0; u0 < width; u0 += per_tile) {
      const int units = static_cast<int>(std::min<int64_t>(per_tile, width - u0));
      const T* rows[kRows];
      T init[kRows];
      for (int t = 0; t < units; ++t) {
        for (int m = 0; m < maps; ++m) {
          rows[t * maps + m] = weight + (m * width + u0 + t) * K;
          init[t * maps + m] = bias[m * width + u0 + t];
        }
      }
      tile<T, Bytes>(units * maps, K, rows, 1, in + j, bp, buffer, NR, init, false);
      for (int t = 0; t < units; ++t) {
        for (int v = 0; v < 2; ++v) {
          const V f = vload<V>(buffer + t * maps * NR + v * L);
          const V g = maps == 2 ? vload<V>(buffer + (t * maps + 1) * NR + v * L) : f;
          V act{}, df{}, dg{};
          activation<T, Bytes, Kind>(omega, scale, f, g, act, df, dg, Derivative);
          const int64_t at = (u0 + t) * bp + j + v * L;
          if (residual) act = (vload<V>(in + at) + act) * T(0.5);
          vstore(out + at, act);
          if constexpr (Derivative) {
            vstore(derivative + at, df);
            if constexpr (maps == 2) vstore(derivative + width * bp + at, dg);
          }
        }
      }
    }
  }
}

template <class T, int Bytes>
BK_INLINE void dense_layer(const CoordinateMlpArgs& a, const T* weight, const T* bias, int64_t K, int64_t width,
                           const T* in, int64_t bp, T* out, bool residual, T* derivative) {
#define BK_DENSE(KIND)                                                                                     \
  if (derivative != nullptr) {                                                                             \
    dense_layer_as<T, Bytes, KIND, true>(a, weight, bias, K, width, in, bp, out, residual, derivative);   \
  } else {                                                                                                 \
    dense_layer_as<T, Bytes, KIND, false>(a, weight, bias, K, width, in, bp, out, residual, derivative);  \
  }
  if (a.activation == kWire) {
    BK_DENSE(kWire)
  } else if (a.activation == kSiren) {
    BK_DENSE(kSiren)
  } else {
    BK_DENSE(kRelu)
  }
#undef BK_DENSE
}


template <class T, class IO>
BK_INLINE void load_coordinates(const CoordinateMlpArgs& a, int64_t start, int64_t count, int64_t bp, T* x) {
  const int64_t d = a.dims;
  for (int64_t c = 0; c < d; ++c) std::fill(x + c * bp + count, x + (c + 1) * bp, T(0));
  if (a.coords != nullptr) {
    const IO* coords = static_cast<const IO*>(a.coords);
    for (int64_t i = 0; i < count; ++i) {
      const IO* row = coords + (start + i) * a.coords_stride[0];
      for (int64_t c = 0; c < d; ++c) x[c * bp + i] = io_load<T>(row + c * a.coords_stride[1]);
    }
    return;
  }
  T offset[3], divisor[3];
  for (int64_t c = 0; c < d; ++c) {
    offset[c] = static_cast<T>(a.grid_offset[c]);
    divisor[c] = static_cast<T>(a.grid_divisor[c]);
  }
  int64_t index[3] = {start / (a.shape[1] * a.shape[2]), (start / a.shape[2]) % a.shape[1], start % a.shape[2]};
  for (int64_t i = 0; i < count; ++i) {
    for (int64_t c = 0; c < d; ++c) {
      x[c * bp + i] = (static_cast<T>(index[3 - d + c]) - offset[c]) / divisor[c];
    }
    if (++index[2] == a.shape[2]) {
      index[2] = 0;
      if (++index[1] == a.shape[1]) {
        index[1] = 0;
        ++index[0];
      }
    }
  }
}

// y (maps x bp) = last_weight . h + last_bias
template <class T, int Bytes>
BK_INLINE void last_layer(const Net<T>& n, const T* h, int64_t bp, T* y) {
  using V = typename Vec<T, Bytes>::type;
  constexpr int L = Vec<T, Bytes>::lanes;
  for (int64_t j = 0; j < n.maps; ++j) {
    const T* w = n.last_weight + j * n.width;
    for (int64_t i = 0; i < bp; i += L) {
      // Four interleaved sums: a long single chain loses more digits than PyTorch's blocked dot.
      V acc[4] = {};
      int64_t k = 0;
      for (; k + 4 <= n.width; k += 4) {
        for (int q = 0; q < 4; ++q) acc[q] += w[k + q] * vload<V>(h + (k + q) * bp + i);
      }
      for (; k < n.width; ++k) acc[0] += w[k] * vload<V>(h + k * bp + i);
      vstore(y + j * bp + i, ((acc[0] + acc[1]) + (acc[2] + acc[3])) + splat<V>(n.last_bias[j]));
    }
  }
}

// The output unit: y (maps x bp) holds the last layer's pre-activations; writes act to `out`
// (bp) and, with `derivative`, the derivatives over y.
template <class T, int Bytes>
BK_INLINE void last_activation(const CoordinateMlpArgs& a, T* y, int64_t bp, T* out, bool derivative) {
  using V = typename Vec<T, Bytes>::type;
  constexpr int L = Vec<T, Bytes>::lanes;
  const bool wire = a.activation == kWire;
  for (int64_t i = 0; i < bp; i += L) {
    const V f = vload<V>(y + i);
    const V g = wire ? vload<V>(y + bp + i) : f;
    V act{}, df{}, dg{};
    const T omega = static_cast<T>(a.omega), scale = static_cast<T>(a.scale);
    if (a.activation == kWire) {
      activation<T, Bytes, kWire>(omega, scale, f, g, act, df, dg, derivative);
    } else if (a.activation == kSiren) {
      activation<T, Bytes, kSiren>(omega, scale, f, g, act, df, dg, derivative);
    } else {
      activation<T, Bytes, kRelu>(omega, scale, f, g, act, df, dg, derivative);
    }
    vstore(out + i, act);
    if (derivative) {
      vstore(y + i, df);
      if (wire) vstore(y + bp + i, dg);
    }
  }
}

}  // namespace mlp
}  // namespace cpu
}  // namespace brainkernels
