#include <cuda_runtime.h>

#include "extract_patches3d/extract_patches3d.h"

namespace brainkernels {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Grid-stride loops need only enough blocks to fill the device; capping the grid keeps
// the launch valid for any element count.
int blocks_for(int64_t elements) {
  const int64_t blocks = (elements + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

// Maps output element i of a contiguous (N, C, s, s, s) patch tensor to its volume
// voxel; returns false where the patch lies outside the volume.
__device__ inline bool patch_voxel(const ExtractPatches3dArgs& a, int64_t i, int64_t* c, int64_t* z,
                                   int64_t* y, int64_t* x) {
  const VolumeGeometry& g = a.volume;
  const int64_t s = a.size, half = s / 2;
  const int64_t dx = i % s;
  int64_t rest = i / s;
  const int64_t dy = rest % s;
  rest /= s;
  const int64_t dz = rest % s;
  rest /= s;
  *c = rest % g.channels;
  const int64_t n = rest / g.channels;
  const int64_t* center = a.centers + 3 * n;
  *z = clamp_center(center[0], g.depth, s) - half + dz;
  *y = clamp_center(center[1], g.height, s) - half + dy;
  *x = clamp_center(center[2], g.width, s) - half + dx;
  return *z >= 0 && *z < g.depth && *y >= 0 && *y < g.height && *x >= 0 && *x < g.width;
}

template <typename T>
__global__ void forward_kernel(ExtractPatches3dArgs a, const T* __restrict__ volume, T padding,
                               T* __restrict__ patches, int64_t total) {
  const VolumeGeometry& g = a.volume;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t c, z, y, x;
    patches[i] = patch_voxel(a, i, &c, &z, &y, &x)
                     ? volume[c * g.stride_c + z * g.stride_d + y * g.stride_h + x * g.stride_w]
                     : padding;
  }
}

template <typename T>
__global__ void backward_kernel(ExtractPatches3dArgs a, const T* __restrict__ grad_patches,
                                T* __restrict__ grad_volume, int64_t total) {
  const VolumeGeometry& g = a.volume;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t c, z, y, x;
    if (patch_voxel(a, i, &c, &z, &y, &x)) {
      atomicAdd(grad_volume + ((c * g.depth + z) * g.height + y) * g.width + x, grad_patches[i]);
    }
  }
}

int64_t patch_elements(const ExtractPatches3dArgs& a) {
  return a.num_patches * a.volume.channels * a.size * a.size * a.size;
}

const char* launch_status() {
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

}  // namespace

const char* extract_patches3d_forward(const ExtractPatches3dArgs& args, const void* volume,
                                      Dtype dtype, uint64_t padding_bits, void* patches,
                                      uintptr_t stream) {
  const int64_t total = patch_elements(args);
  if (total == 0) return nullptr;
  auto* cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  const int blocks = blocks_for(total);
  switch (dtype_size(dtype)) {
    case 2:
      forward_kernel<<<blocks, kThreads, 0, cuda_stream>>>(
          args, static_cast<const uint16_t*>(volume), static_cast<uint16_t>(padding_bits),
          static_cast<uint16_t*>(patches), total);
      break;
    case 4:
      forward_kernel<<<blocks, kThreads, 0, cuda_stream>>>(
          args, static_cast<const uint32_t*>(volume), static_cast<uint32_t>(padding_bits),
          static_cast<uint32_t*>(patches), total);
      break;
    case 8:
      forward_kernel<<<blocks, kThreads, 0, cuda_stream>>>(
          args, static_cast<const uint64_t*>(volume), padding_bits,
          static_cast<uint64_t*>(patches), total);
      break;
    default:
      return "extract_patches3d: unknown volume dtype";
  }
  return launch_status();
}

const char* extract_patches3d_backward(const ExtractPatches3dArgs& args, const void* grad_patches,
                                       Dtype dtype, void* grad_volume, uintptr_t stream) {
  if (dtype != Dtype::kFloat32 && dtype != Dtype::kFloat64) {
    return "extract_patches3d: the backward takes float32 or float64 gradients";
  }
  const int64_t total = patch_elements(args);
  if (total == 0) return nullptr;
  auto* cuda_stream = reinterpret_cast<cudaStream_t>(stream);
  const int blocks = blocks_for(total);
  if (dtype == Dtype::kFloat64) {
    backward_kernel<<<blocks, kThreads, 0, cuda_stream>>>(
        args, static_cast<const double*>(grad_patches), static_cast<double*>(grad_volume), total);
  } else {
    backward_kernel<<<blocks, kThreads, 0, cuda_stream>>>(
        args, static_cast<const float*>(grad_patches), static_cast<float*>(grad_volume), total);
  }
  return launch_status();
}

}  // namespace cuda
}  // namespace brainkernels
