#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "extract_patches3d/extract_patches3d.h"

namespace brainkernels {
namespace cpu {
namespace {

// T is an unsigned integer of the element's width: a forward pass only moves bits.
template <typename T>
void forward_rows(const ExtractPatches3dArgs& a, const T* volume, T padding, T* patches, int num_threads) {
  const VolumeGeometry& g = a.volume;
  const int64_t s = a.size, half = s / 2;
  // One task per output row (n, c, dz, dy): rows are contiguous in the output, and along
  // x the in-volume part is a single contiguous run when stride_w == 1.
  const int64_t rows = a.num_patches * g.channels * s * s;
#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t dy = row % s;
    int64_t rest = row / s;
    const int64_t dz = rest % s;
    rest /= s;
    const int64_t c = rest % g.channels;
    const int64_t n = rest / g.channels;
    const int64_t* center = a.centers + 3 * n;
    const int64_t z = clamp_center(center[0], g.depth, s) - half + dz;
    const int64_t y = clamp_center(center[1], g.height, s) - half + dy;
    const int64_t x0 = clamp_center(center[2], g.width, s) - half;
    T* dst = patches + row * s;
    if (z < 0 || z >= g.depth || y < 0 || y >= g.height) {
      std::fill(dst, dst + s, padding);
      continue;
    }
    const int64_t lo = std::min(s, std::max<int64_t>(0, -x0));
    const int64_t hi = std::max(lo, std::min(s, g.width - x0));
    std::fill(dst, dst + lo, padding);
    std::fill(dst + hi, dst + s, padding);
    const T* src = volume + c * g.stride_c + z * g.stride_d + y * g.stride_h + (x0 + lo) * g.stride_w;
    if (g.stride_w == 1) {
      std::memcpy(dst + lo, src, static_cast<size_t>(hi - lo) * sizeof(T));
    } else {
      for (int64_t k = lo; k < hi; ++k) dst[k] = src[(k - lo) * g.stride_w];
    }
  }
}

template <typename T>
void backward_planes(const ExtractPatches3dArgs& a, const T* grad_patches, T* grad_volume, int num_threads) {
  const VolumeGeometry& g = a.volume;
  const int64_t s = a.size, half = s / 2;
  const int64_t planes = g.channels * g.depth;
  // Each (c, z) plane of the gradient is owned by one task, so there are no write races,
  // and each voxel sums its patches in index order: the result does not depend on the
  // number of threads.
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1)
  for (int64_t plane = 0; plane < planes; ++plane) {
    const int64_t c = plane / g.depth, z = plane % g.depth;
    T* dst_plane = grad_volume + plane * g.height * g.width;
    for (int64_t n = 0; n < a.num_patches; ++n) {
      const int64_t* center = a.centers + 3 * n;
      const int64_t dz = z - (clamp_center(center[0], g.depth, s) - half);
      if (dz < 0 || dz >= s) continue;
      const int64_t y0 = clamp_center(center[1], g.height, s) - half;
      const int64_t x0 = clamp_center(center[2], g.width, s) - half;
      const int64_t y_lo = std::max<int64_t>(0, -y0), y_hi = std::min(s, g.height - y0);
      const int64_t x_lo = std::max<int64_t>(0, -x0), x_hi = std::min(s, g.width - x0);
      const T* src_patch = grad_patches + ((n * g.channels + c) * s + dz) * s * s;
      for (int64_t dy = y_lo; dy < y_hi; ++dy) {
        const T* src = src_patch + dy * s;
        T* dst_row = dst_plane + (y0 + dy) * g.width;
        for (int64_t k = x_lo; k < x_hi; ++k) dst_row[x0 + k] += src[k];
      }
    }
  }
}

}  // namespace

void extract_patches3d_forward(const ExtractPatches3dArgs& args, const void* volume, Dtype dtype,
                               uint64_t padding_bits, void* patches, int num_threads) {
  switch (dtype_size(dtype)) {
    case 2:
      forward_rows(args, static_cast<const uint16_t*>(volume), static_cast<uint16_t>(padding_bits),
                   static_cast<uint16_t*>(patches), num_threads);
      break;
    case 4:
      forward_rows(args, static_cast<const uint32_t*>(volume), static_cast<uint32_t>(padding_bits),
                   static_cast<uint32_t*>(patches), num_threads);
      break;
    case 8:
      forward_rows(args, static_cast<const uint64_t*>(volume), padding_bits,
                   static_cast<uint64_t*>(patches), num_threads);
      break;
    default:
      throw std::invalid_argument("extract_patches3d: unknown volume dtype");
  }
}

void extract_patches3d_backward(const ExtractPatches3dArgs& args, const void* grad_patches, Dtype dtype,
                                void* grad_volume, int num_threads) {
  switch (dtype) {
    case Dtype::kFloat64:
      backward_planes(args, static_cast<const double*>(grad_patches), static_cast<double*>(grad_volume),
                      num_threads);
      break;
    case Dtype::kFloat32:
      backward_planes(args, static_cast<const float*>(grad_patches), static_cast<float*>(grad_volume),
                      num_threads);
      break;
    default:
      throw std::invalid_argument("extract_patches3d: the backward takes float32 or float64 gradients");
  }
}

}  // namespace cpu
}  // namespace brainkernels
