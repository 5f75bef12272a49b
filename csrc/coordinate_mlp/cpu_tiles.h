// Register-tiled matrix products of the coordinate MLP's CPU kernels: a generic micro-tile on
// GCC vectors, float micro-tiles with AVX2 and AVX-512 intrinsics, and the products built on them.
#pragma once
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define BK_HAVE_AVX2_PATH 1
#else
#define BK_HAVE_AVX2_PATH 0
#endif

#include <algorithm>
#include <type_traits>

#include "common/cpu_simd.h"

namespace brainkernels {
namespace cpu {
namespace mlp {

constexpr int kRows = 6;  // micro-tile rows: 6 x 2 accumulator vectors fit 16 vector registers

// Register-tiled products. A tile computes kRows x NR outputs (NR = two vectors of voxels):
//   C[r][0:NR] = init_r + sum_k rows[r][k * a_cols] * B[k * b_rows + 0:NR]
// with init_r = C[r] (accumulate), bias[r] (bias given) or 0. Rows of A are given by pointer,
// so a tile can pair WIRE's freqs and scale rows of the same units.

// Accumulators are named variables: GCC keeps an array of vectors on the stack inside the k loop.
#define BK_TILE_ROWS(X) X(0, c00, c01) X(1, c10, c11) X(2, c20, c21) X(3, c30, c31) X(4, c40, c41) X(5, c50, c51)

template <class T, int Bytes, int MR>
BK_INLINE void micro_tile(int64_t K, const T* const* rows, int64_t a_cols, const T* B, int64_t b_rows, T* C,
                          int64_t c_rows, const T* bias, bool accumulate) {
  using V = typename Vec<T, Bytes>::type;
  constexpr int L = Vec<T, Bytes>::lanes;
  V c00{}, c01{}, c10{}, c11{}, c20{}, c21{}, c30{}, c31{}, c40{}, c41{}, c50{}, c51{};
#define BK_INIT(r, lo, hi)                \
  if (MR > r) {                           \
    if (accumulate) {                     \
      lo = vload<V>(C + r * c_rows);      \
      hi = vload<V>(C + r * c_rows + L);  \
    } else if (bias != nullptr) {         \
      lo = hi = splat<V>(bias[r]);        \
    }                                     \
  }
#define BK_FMA(r, lo, hi)                         \
  if (MR > r) {                                   \
    const V ar = splat<V>(rows[r][k * a_cols]);   \
    lo += ar * b0;                                \
    hi += ar * b1;                                \
  }
#define BK_STORE(r, lo, hi)          \
  if (MR > r) {                      \
    vstore(C + r * c_rows, lo);      \
    vstore(C + r * c_rows + L, hi);  \
  }
  BK_TILE_ROWS(BK_INIT)
  for (int64_t k = 0; k < K; ++k) {
    const V b0 = vload<V>(B + k * b_rows), b1 = vload<V>(B + k * b_rows + L);
    BK_TILE_ROWS(BK_FMA)
  }
  BK_TILE_ROWS(BK_STORE)
#undef BK_STORE
#undef BK_FMA
#undef BK_INIT
}

#if BK_HAVE_AVX2_PATH
// The float tiles with intrinsics (cpu_float_tile.inc), one per instruction set.
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
using Floats = __m256;
constexpr int kLanes = 8;
BK_INLINE Floats zeros() { return _mm256_setzero_ps(); }
BK_INLINE Floats load(const float* p) { return _mm256_loadu_ps(p); }
BK_INLINE Floats broadcast(const float* p) { return _mm256_broadcast_ss(p); }
BK_INLINE Floats fmadd(Floats a, Floats b, Floats c) { return _mm256_fmadd_ps(a, b, c); }
BK_INLINE void store(float* p, Floats v) { _mm256_storeu_ps(p, v); }
#include "coordinate_mlp/cpu_float_tile.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
namespace avx512 {
using Floats = __m512;
constexpr int kLanes = 16;
BK_INLINE Floats zeros() { return _mm512_setzero_ps(); }
BK_INLINE Floats load(const float* p) { return _mm512_loadu_ps(p); }
BK_INLINE Floats broadcast(const float* p) { return _mm512_set1_ps(*p); }
BK_INLINE Floats fmadd(Floats a, Floats b, Floats c) { return _mm512_fmadd_ps(a, b, c); }
BK_INLINE void store(float* p, Floats v) { _mm512_storeu_ps(p, v); }
#include "coordinate_mlp/cpu_float_tile.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

template <class T, int Bytes, int MR>
BK_INLINE void tile_rows(int64_t K, const T* const* rows, int64_t a_cols, const T* B, int64_t b_rows, T* C,
                         int64_t c_rows, const T* bias, bool accumulate) {
#if BK_HAVE_AVX2_PATH
  if constexpr (std::is_same_v<T, float> && Bytes == 32) {
    avx2::float_tile<MR>(K, rows, a_cols, B, b_rows, C, c_rows, bias, accumulate);
    return;
  }
  if constexpr (std::is_same_v<T, float> && Bytes == 64) {
    avx512::float_tile<MR>(K, rows, a_cols, B, b_rows, C, c_rows, bias, accumulate);
    return;
  }
#endif
  micro_tile<T, Bytes, MR>(K, rows, a_cols, B, b_rows, C, c_rows, bias, accumulate);
}

template <class T, int Bytes>
BK_INLINE void tile(int count, int64_t K, const T* const* rows, int64_t a_cols, const T* B, int64_t b_rows, T* C,
                    int64_t c_rows, const T* bias, bool accumulate) {
  switch (count) {
    case 6: tile_rows<T, Bytes, 6>(K, rows, a_cols, B, b_rows, C, c_rows, bias, accumulate); break;
    case 5: tile_rows<T, Bytes, 5>(K, rows, a_cols, B, b_rows, C, c_rows, bias, accumulate); break;
    case 4: tile_rows<T, Bytes, 4>(K, rows, a_cols, B, b_rows, C, c_rows, bias, accumulate); break;
    case 3: tile_rows<T, Bytes, 3>(K, rows, a_cols, B, b_rows, C, c_rows, bias, accumulate); break;
    case 2: tile_rows<T, Bytes, 2>(K, rows, a_cols, B, b_rows, C, c_rows, bias, accumulate); break;
    case 1: tile_rows<T, Bytes, 1>(K, rows, a_cols, B, b_rows, C, c_rows, bias, accumulate); break;
    default: break;
  }
}

// C (M x N) = [C +] A (M x K) B (K x N), A element (i, k) at A[i * a_rows + k * a_cols].
template <class T, int Bytes>
BK_INLINE void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_rows, int64_t a_cols, const T* B,
                    int64_t b_rows, T* C, int64_t c_rows, bool accumulate) {
  constexpr int64_t NR = 2 * Vec<T, Bytes>::lanes;
  int64_t j = 0;
  for (; j + NR <= N; j += NR) {
    for (int64_t i = 0; i < M; i += kRows) {
      const int count = static_cast<int>(std::min<int64_t>(kRows, M - i));
      const T* rows[kRows];
      for (int r = 0; r < count; ++r) rows[r] = A + (i + r) * a_rows;
      tile<T, Bytes>(count, K, rows, a_cols, B + j, b_rows, C + i * c_rows + j, c_rows, nullptr, accumulate);
    }
  }
  for (; j < N; ++j) {  // only weight gradients of widths that are not a multiple of NR
    for (int64_t i = 0; i < M; ++i) {
      T sum = accumulate ? C[i * c_rows + j] : T(0);
      for (int64_t k = 0; k < K; ++k) sum += A[i * a_rows + k * a_cols] * B[k * b_rows + j];
      C[i * c_rows + j] = sum;
    }
  }
}

#undef BK_TILE_ROWS

}  // namespace mlp
}  // namespace cpu
}  // namespace brainkernels
