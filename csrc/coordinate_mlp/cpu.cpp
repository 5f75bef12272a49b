// C++/OpenMP kernels of brainkernels::coordinate_mlp: the neonatal INR's per-voxel MLP evaluated
// block by block, activations kept in a thread's small scratch (never in memory the size of the
// volume). Layout and contracts: coordinate_mlp.h. This file instantiates the per-block passes
// (cpu_forward.h, cpu_backward.h, built on cpu_layers.h, cpu_tiles.h and cpu_math.h) for each
// instruction set and runs them over the blocks in parallel.
//
// Inside a block, activations are stored unit-major (units x voxels, voxels contiguous), so
// every layer is a small matrix product whose inner loop broadcasts a weight and streams
// voxels, and every activation function vectorises over voxels. Each 6 x 16 tile of a layer's
// product is activated while it sits in registers (WIRE's freqs and scale rows of the same
// units share a tile), so pre-activations never make a pass through memory. The code is
// written with GCC vector extensions and compiled three times, for AVX-512, AVX2+FMA (each with
// an intrinsics micro-kernel) and the baseline ISA; common/cpu_isa.h chooses at run time,
// so the wheel needs no -march flag. At the paper's width the AVX2 product runs near the FMA
// peak (about twice the rate PyTorch's MKL GEMM reaches on the same AMD core); AVX-512 doubles
// the lanes on a core with 512-bit FMA units (Zen 5, Intel server cores).
#include <omp.h>

#include <algorithm>
#include <stdexcept>

#include "common/cpu_isa.h"
#include "coordinate_mlp/coordinate_mlp.h"
#include "coordinate_mlp/cpu_backward.h"
#include "coordinate_mlp/cpu_forward.h"
#include "coordinate_mlp/cpu_layers.h"
#include "coordinate_mlp/cpu_tiles.h"

namespace brainkernels {
namespace cpu {
namespace mlp {
namespace {

// ---------------------------------------------------------------------------------------------
// ISA instantiations: each processes a range of blocks.

template <class T, class IO, int Bytes>
BK_INLINE void forward_range(const CoordinateMlpArgs& a, int64_t first, int64_t last, IO* out, T* scratch) {
  const Net<T> n = net_at<T>(a, static_cast<const T*>(a.packed));
  for (int64_t b = first; b < last; ++b) {
    const int64_t start = b * a.block;
    forward_block<T, IO, Bytes>(a, n, start, std::min(a.block, a.num_voxels - start), out, scratch);
  }
}

template <class T, class IO, int Bytes>
BK_INLINE void backward_range(const CoordinateMlpArgs& a, int64_t first, int64_t last, const IO* grad_out,
                              const int64_t* grad_strides, T* partial, IO* grad_coords, T* scratch) {
  const Net<T> n = net_at<T>(a, static_cast<const T*>(a.packed));
  const Net<T> g = net_at<T>(a, partial);
  for (int64_t b = first; b < last; ++b) {
    const int64_t start = b * a.block;
    backward_block<T, IO, Bytes>(a, n, g, start, std::min(a.block, a.num_voxels - start), grad_out, grad_strides,
                                 grad_coords, scratch);
  }
}

template <class T, class IO>
void forward_range_baseline(const CoordinateMlpArgs& a, int64_t first, int64_t last, IO* out, T* scratch) {
  forward_range<T, IO, 16>(a, first, last, out, scratch);
}

template <class T, class IO>
void backward_range_baseline(const CoordinateMlpArgs& a, int64_t first, int64_t last, const IO* grad_out,
                             const int64_t* grad_strides, T* partial, IO* grad_coords, T* scratch) {
  backward_range<T, IO, 16>(a, first, last, grad_out, grad_strides, partial, grad_coords, scratch);
}

#if BK_HAVE_AVX2_PATH
template <class T, class IO>
__attribute__((target("avx2,fma"))) void forward_range_avx2(const CoordinateMlpArgs& a, int64_t first, int64_t last,
                                                            IO* out, T* scratch) {
  forward_range<T, IO, 32>(a, first, last, out, scratch);
}

template <class T, class IO>
__attribute__((target("avx2,fma"))) void backward_range_avx2(const CoordinateMlpArgs& a, int64_t first,
                                                             int64_t last, const IO* grad_out,
                                                             const int64_t* grad_strides, T* partial,
                                                             IO* grad_coords, T* scratch) {
  backward_range<T, IO, 32>(a, first, last, grad_out, grad_strides, partial, grad_coords, scratch);
}

#define BK_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))

template <class T, class IO>
BK_AVX512 void forward_range_avx512(const CoordinateMlpArgs& a, int64_t first, int64_t last, IO* out, T* scratch) {
  forward_range<T, IO, 64>(a, first, last, out, scratch);
}

template <class T, class IO>
BK_AVX512 void backward_range_avx512(const CoordinateMlpArgs& a, int64_t first, int64_t last, const IO* grad_out,
                                     const int64_t* grad_strides, T* partial, IO* grad_coords, T* scratch) {
  backward_range<T, IO, 64>(a, first, last, grad_out, grad_strides, partial, grad_coords, scratch);
}
#undef BK_AVX512
#endif

// ---------------------------------------------------------------------------------------------
// Drivers

int64_t num_blocks(const CoordinateMlpArgs& a) { return (a.num_voxels + a.block - 1) / a.block; }

template <class T, class IO>
void forward_typed(const CoordinateMlpArgs& a, IO* out, T* scratch, int num_threads) {
  const int64_t blocks = num_blocks(a), slot = forward_scratch(a);
  const Isa isa = cpu_isa_active();
#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    T* mine = scratch + omp_get_thread_num() * slot;
#if BK_HAVE_AVX2_PATH
    if (isa == Isa::kAvx512) {
      forward_range_avx512<T, IO>(a, b, b + 1, out, mine);
      continue;
    }
    if (isa == Isa::kAvx2) {
      forward_range_avx2<T, IO>(a, b, b + 1, out, mine);
      continue;
    }
#endif
    (void)isa;
    forward_range_baseline<T, IO>(a, b, b + 1, out, mine);
  }
}

template <class T, class IO>
void backward_typed(const CoordinateMlpArgs& a, const IO* grad_out, const int64_t* grad_strides, T* grad_packed,
                    T* partials, int64_t num_partials, IO* grad_coords, T* scratch) {
  const int64_t blocks = num_blocks(a), slot = backward_scratch(a);
  const int64_t size = packed_size(a.dims, a.width, a.depth, maps_of(a.activation));
  const Isa isa = cpu_isa_active();
  // Partial p always covers the same blocks, whichever thread runs it.
#pragma omp parallel for num_threads(static_cast<int>(num_partials)) schedule(static, 1)
  for (int64_t p = 0; p < num_partials; ++p) {
    T* partial = p == 0 ? grad_packed : partials + (p - 1) * size;
    std::fill(partial, partial + size, T(0));
    const int64_t first = blocks * p / num_partials, last = blocks * (p + 1) / num_partials;
    T* mine = scratch + p * slot;
#if BK_HAVE_AVX2_PATH
    if (isa == Isa::kAvx512) {
      backward_range_avx512<T, IO>(a, first, last, grad_out, grad_strides, partial, grad_coords, mine);
      continue;
    }
    if (isa == Isa::kAvx2) {
      backward_range_avx2<T, IO>(a, first, last, grad_out, grad_strides, partial, grad_coords, mine);
      continue;
    }
#endif
    (void)isa;
    backward_range_baseline<T, IO>(a, first, last, grad_out, grad_strides, partial, grad_coords, mine);
  }
  // Sum the partials into grad_packed in row order: deterministic for a given num_partials.
  constexpr int64_t chunk = 4096;
  const int64_t chunks = (size + chunk - 1) / chunk;
#pragma omp parallel for num_threads(static_cast<int>(num_partials)) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t lo = c * chunk, hi = std::min(size, lo + chunk);
    for (int64_t p = 1; p < num_partials; ++p) {
      const T* row = partials + (p - 1) * size;
      for (int64_t e = lo; e < hi; ++e) grad_packed[e] += row[e];
    }
  }
}

void check_args(const CoordinateMlpArgs& a) {
  if (a.dims < 1 || a.dims > 3) throw std::invalid_argument("coordinate_mlp: dims must be 1, 2 or 3");
  if (a.width < 1 || a.depth < 2) throw std::invalid_argument("coordinate_mlp: need width >= 1 and depth >= 2");
  if (a.activation < kWire || a.activation > kRelu) throw std::invalid_argument("coordinate_mlp: bad activation");
  if (a.block < 1) throw std::invalid_argument("coordinate_mlp: block must be positive");
  if (a.num_voxels != a.shape[0] * a.shape[1] * a.shape[2]) {
    throw std::invalid_argument("coordinate_mlp: num_voxels does not match shape");
  }
  if (a.io != Dtype::kFloat32 && a.io != Dtype::kBFloat16 && a.io != Dtype::kFloat64) {
    throw std::invalid_argument("coordinate_mlp: the io dtype must be float32, bfloat16 or float64");
  }
}

}  // namespace
}  // namespace mlp

int64_t coordinate_mlp_packed_size(int64_t dims, int64_t width, int64_t depth, int32_t activation) {
  return mlp::packed_size(dims, width, depth, mlp::maps_of(activation));
}

int64_t coordinate_mlp_scratch_elements(const CoordinateMlpArgs& args, bool backward) {
  return backward ? mlp::backward_scratch(args) : mlp::forward_scratch(args);
}

void coordinate_mlp_forward(const CoordinateMlpArgs& args, void* out, void* scratch, int num_threads) {
  mlp::check_args(args);
  if (args.num_voxels == 0) return;
  switch (args.io) {
    case Dtype::kFloat32:
      mlp::forward_typed<float, float>(args, static_cast<float*>(out), static_cast<float*>(scratch), num_threads);
      break;
    case Dtype::kBFloat16:
      mlp::forward_typed<float, uint16_t>(args, static_cast<uint16_t*>(out), static_cast<float*>(scratch), num_threads);
      break;
    default:  // float64, the one other dtype check_args admits
      mlp::forward_typed<double, double>(args, static_cast<double*>(out), static_cast<double*>(scratch), num_threads);
  }
}

void coordinate_mlp_backward(const CoordinateMlpArgs& args, const void* grad_out, const int64_t grad_strides[3],
                             void* grad_packed, void* partials, int64_t num_partials, void* grad_coords,
                             void* scratch) {
  mlp::check_args(args);
  if (num_partials < 1) throw std::invalid_argument("coordinate_mlp: num_partials must be positive");
  switch (args.io) {
    case Dtype::kFloat32:
      mlp::backward_typed<float, float>(args, static_cast<const float*>(grad_out), grad_strides,
                                        static_cast<float*>(grad_packed), static_cast<float*>(partials), num_partials,
                                        static_cast<float*>(grad_coords), static_cast<float*>(scratch));
      break;
    case Dtype::kBFloat16:
      mlp::backward_typed<float, uint16_t>(args, static_cast<const uint16_t*>(grad_out), grad_strides,
                                           static_cast<float*>(grad_packed), static_cast<float*>(partials),
                                           num_partials, static_cast<uint16_t*>(grad_coords),
                                           static_cast<float*>(scratch));
      break;
    default:  // float64
      mlp::backward_typed<double, double>(args, static_cast<const double*>(grad_out), grad_strides,
                                          static_cast<double*>(grad_packed), static_cast<double*>(partials),
                                          num_partials, static_cast<double*>(grad_coords),
                                          static_cast<double*>(scratch));
  }
}

}  // namespace cpu
}  // namespace brainkernels
