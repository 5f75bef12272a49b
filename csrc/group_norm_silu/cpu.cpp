// brainkernels::group_norm_silu on the CPU: the kernels of cpu_kernels.inc compiled for AVX-512,
// AVX2+FMA and the baseline ISA, and the entry points of group_norm_silu.h that run the set
// common/cpu_isa.h chooses. (Per-set target pragmas instead of per-file -m flags: a file compiled
// with -mavx512f could give the linker AVX-512 copies of inline library functions that the
// baseline code then calls.)
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "common/cpu_isa.h"
#include "common/cpu_simd.h"
#include "group_norm_silu/group_norm_silu.h"

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define BK_GN_VECTOR_PATHS 1
#else
#define BK_GN_VECTOR_PATHS 0
#endif

namespace brainkernels {
namespace cpu {

#if BK_GN_VECTOR_PATHS
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
namespace avx512 {
#include "cpu_kernels.inc"
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#include "cpu_kernels.inc"
}  // namespace avx2
#pragma GCC pop_options
#endif

namespace baseline {
#include "cpu_kernels.inc"
}  // namespace baseline

#if BK_GN_VECTOR_PATHS
#define BK_GN_DISPATCH(function, ...)                                   \
  switch (cpu_isa_active()) {                                           \
    case Isa::kAvx512: return avx512::function(__VA_ARGS__);            \
    case Isa::kAvx2: return avx2::function(__VA_ARGS__);                \
    default: return baseline::function(__VA_ARGS__);                    \
  }
#else
#define BK_GN_DISPATCH(function, ...) return baseline::function(__VA_ARGS__);
#endif

void group_norm_silu_moments(const GroupNormSiluArgs& a, void* mean, void* m2, int num_threads) {
  BK_GN_DISPATCH(group_norm_silu_moments, a, mean, m2, num_threads)
}

void group_norm_silu_forward(const GroupNormSiluArgs& a, const void* center, const void* alpha, const void* beta,
                             void* out, int64_t out_stride_n, int64_t out_stride_c, int num_threads) {
  BK_GN_DISPATCH(group_norm_silu_forward, a, center, alpha, beta, out, out_stride_n, out_stride_c, num_threads)
}

void group_norm_silu_backward_sums(const GroupNormSiluArgs& a, const RowsView& grad_out, const void* center,
                                   const void* alpha, const void* beta, const void* xa, void* sums, int num_threads) {
  BK_GN_DISPATCH(group_norm_silu_backward_sums, a, grad_out, center, alpha, beta, xa, sums, num_threads)
}

void group_norm_silu_backward_input(const GroupNormSiluArgs& a, const RowsView& grad_out, const void* center,
                                    const void* alpha, const void* beta, const void* p, const void* q, const void* r,
                                    void* grad_input, int num_threads) {
  BK_GN_DISPATCH(group_norm_silu_backward_input, a, grad_out, center, alpha, beta, p, q, r, grad_input, num_threads)
}

#undef BK_GN_DISPATCH

}  // namespace cpu
}  // namespace brainkernels
