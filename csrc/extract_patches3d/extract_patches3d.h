// Plain-data bridge between the bindings, the C++ kernels and the CUDA kernels.
// Included by host and device sources alike, so it holds only standard integer types.
#pragma once
#include <cstdint>

#include "common/dtype.h"

#if defined(__CUDACC__)
#define BRAINKERNELS_HOST_DEVICE __host__ __device__
#else
#define BRAINKERNELS_HOST_DEVICE
#endif

namespace brainkernels {

// A (C, D, H, W) volume addressed through element strides, so sliced or permuted
// volumes are read in place instead of being copied first.
struct VolumeGeometry {
  int64_t channels, depth, height, width;
  int64_t stride_c, stride_d, stride_h, stride_w;
};

// Patch k along an axis of a patch of `size` voxels centred at c reads volume index
// c - size / 2 + k, for odd and even sizes alike (even sizes: the centre is the voxel
// at index size / 2 of the patch).
struct ExtractPatches3dArgs {
  VolumeGeometry volume;
  const int64_t* centers;  // (num_patches, 3) contiguous, voxel indices (d, h, w)
  int64_t num_patches;
  int64_t size;
};

// Centres further than one patch outside the volume give all-padding patches either way;
// clamping them first keeps every index computation far from int64 overflow.
BRAINKERNELS_HOST_DEVICE inline int64_t clamp_center(int64_t center, int64_t extent, int64_t size) {
  return center < -size ? -size : (center > extent + size ? extent + size : center);
}

namespace cpu {
// Extraction is a copy, so of the volume's dtype only its size matters; padding_bits holds the
// padding value in that dtype.
void extract_patches3d_forward(const ExtractPatches3dArgs& args, const void* volume, Dtype dtype,
                               uint64_t padding_bits, void* patches, int num_threads);
// grad_patches is contiguous (N, C, s, s, s); grad_volume is contiguous (C, D, H, W),
// zero-initialised by the caller and accumulated into; both of `dtype`, float32 or float64.
void extract_patches3d_backward(const ExtractPatches3dArgs& args, const void* grad_patches,
                                Dtype dtype, void* grad_volume, int num_threads);
}  // namespace cpu

namespace cuda {
// Same contracts as the CPU kernels, launched on `stream` on the current device.
// Return nullptr on success, otherwise the CUDA error message.
const char* extract_patches3d_forward(const ExtractPatches3dArgs& args, const void* volume,
                                      Dtype dtype, uint64_t padding_bits, void* patches,
                                      uintptr_t stream);
const char* extract_patches3d_backward(const ExtractPatches3dArgs& args, const void* grad_patches,
                                       Dtype dtype, void* grad_volume, uintptr_t stream);
}  // namespace cuda

}  // namespace brainkernels
