// C++/OpenMP kernels of brainkernels::coordinate_mlp: the neonatal INR's per-voxel MLP evaluated
// block by block, activations kept in a thread's small scratch (never in memory the size of the
// volume). Layout and contracts: coordinate_mlp.h.
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

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
#define BK_HAVE_AVX2_PATH 1
#else
#define BK_HAVE_AVX2_PATH 0
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "coordinate_mlp/coordinate_mlp.h"
#include "common/cpu_isa.h"

#if defined(__GNUC__) && !defined(__clang__)
// 32-byte vectors only ever live inside always-inlined code of the AVX2 instantiation.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#define BK_INLINE __attribute__((always_inline)) inline

namespace brainkernels {
namespace cpu {
namespace {

// Block widths are padded to a multiple of this (a multiple of every micro-tile width), so
// the forward and the recomputation run on whole vectors; padded voxels have coordinate 0,
// receive zero output gradient and are never written or summed.
constexpr int64_t kPad = 32;
constexpr int kRows = 6;  // micro-tile rows: 6 x 2 accumulator vectors fit 16 vector registers

int64_t maps_of(int32_t activation) { return activation == kWire ? 2 : 1; }

template <class T, int Bytes>
struct Vec {
  typedef T type __attribute__((vector_size(Bytes)));
  typedef int32_t ints __attribute__((vector_size(Bytes / (sizeof(T) / sizeof(int32_t)))));
  typedef int64_t pairs __attribute__((vector_size(Bytes / (sizeof(T) / sizeof(int32_t)))));  // ints, by two
  static constexpr int lanes = Bytes / static_cast<int>(sizeof(T));
};

template <class V, class T>
BK_INLINE V vload(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <class V, class T>
BK_INLINE void vstore(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// A vector of copies of s. (GCC 12 builds `V{s, s, ...}` lane by lane inside target("avx2")
// functions; a shuffle with an all-zero mask becomes one broadcast.)
template <class V, class T>
BK_INLINE V splat(T s) {
#if defined(__clang__)
  return s - V{};  // s - (+0) is s for every s, so this folds to a broadcast
#else
  using Lane = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef Lane Mask __attribute__((vector_size(sizeof(V))));
  V v{};
  v[0] = s;
  return __builtin_shuffle(v, Mask{});
#endif
}

// ---------------------------------------------------------------------------------------------
// Element conversion of the per-voxel tensors.

BK_INLINE float bf16_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

BK_INLINE uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even, as torch does
  return static_cast<uint16_t>(u >> 16);
}

template <class T>
BK_INLINE T io_load(const float* p) { return static_cast<T>(*p); }
template <class T>
BK_INLINE T io_load(const double* p) { return static_cast<T>(*p); }
template <class T>
BK_INLINE T io_load(const uint16_t* p) { return static_cast<T>(bf16_to_float(*p)); }
template <class T>
BK_INLINE void io_store(float* p, T v) { *p = static_cast<float>(v); }
template <class T>
BK_INLINE void io_store(double* p, T v) { *p = static_cast<double>(v); }
template <class T>
BK_INLINE void io_store(uint16_t* p, T v) { *p = float_to_bf16(static_cast<float>(v)); }

// ---------------------------------------------------------------------------------------------
// Vectorised exp and sin/cos. float: Cephes polynomials (max error a few ulp), with the exact
// libm functions for lanes outside the polynomials' range; double (the float64 path, used for
// checking) calls libm lane by lane.

template <class T, int Bytes>
BK_INLINE typename Vec<T, Bytes>::type vexp(const typename Vec<T, Bytes>::type& x_in) {
  using V = typename Vec<T, Bytes>::type;
  constexpr int L = Vec<T, Bytes>::lanes;
  V x = x_in;
  if constexpr (std::is_same_v<T, double>) {
    for (int l = 0; l < L; ++l) x[l] = std::exp(x[l]);
    return x;
  } else {
    using I = typename Vec<T, Bytes>::ints;
    const V hi = V{} + 88.3762626647949f, lo = V{} - 88.3762626647949f;
    x = x > hi ? hi : x;
    x = x < lo ? lo : x;
    V fx = x * 1.44269504088896341f + 0.5f;
    V floor_fx = __builtin_convertvector(__builtin_convertvector(fx, I), V);
    floor_fx = floor_fx > fx ? floor_fx - 1.0f : floor_fx;
    x = x - floor_fx * 0.693359375f;
    x = x - floor_fx * -2.12194440e-4f;
    const V z = x * x;
    V y = 1.9875691500e-4f * x + 1.3981999507e-3f;
    y = y * x + 8.3334519073e-3f;
    y = y * x + 4.1665795894e-2f;
    y = y * x + 1.6666665459e-1f;
    y = y * x + 5.0000001201e-1f;
    y = y * z + x + 1.0f;
    const I exponent = (__builtin_convertvector(floor_fx, I) + 127) << 23;
    return y * (V)exponent;  // bit cast: 2^floor_fx
  }
}

template <class T, int Bytes>
BK_INLINE void vsincos(const typename Vec<T, Bytes>::type& x, typename Vec<T, Bytes>::type& sin_x,
                       typename Vec<T, Bytes>::type& cos_x) {
  using V = typename Vec<T, Bytes>::type;
  constexpr int L = Vec<T, Bytes>::lanes;
  if constexpr (std::is_same_v<T, double>) {
    for (int l = 0; l < L; ++l) {
      sin_x[l] = std::sin(x[l]);
      cos_x[l] = std::cos(x[l]);
    }
  } else {
    using I = typename Vec<T, Bytes>::ints;
    const V ax = x < 0.0f ? -x : x;
    // Three-part Cody-Waite reduction is accurate up to |x| = 8192; beyond it (and for NaN
    // and infinities) the lanes go to libm.
    const I slow = ~(ax <= 8192.0f);
    using Pairs = typename Vec<T, Bytes>::pairs;
    const Pairs pairs = (Pairs)slow;  // two lanes per test
    int64_t any_slow = 0;
    for (int l = 0; l < L / 2; ++l) any_slow |= pairs[l];
    if (any_slow != 0) {
      for (int l = 0; l < L; ++l) {
        sin_x[l] = std::sin(x[l]);
        cos_x[l] = std::cos(x[l]);
      }
      return;
    }
    I octant = __builtin_convertvector(ax * 1.27323954473516f, I);
    octant = (octant + 1) & ~1;
    const V y = __builtin_convertvector(octant, V);
    V r = ax - y * 0.78515625f;
    r = r - y * 2.4187564849853515625e-4f;
    r = r - y * 3.77489497744594108e-8f;
    const V z = r * r;
    const V poly_cos = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
                       0.5f * z + 1.0f;
    const V poly_sin = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
    const I swap = (octant & 2) != 0;
    const V s = swap ? poly_cos : poly_sin;
    const V c = swap ? poly_sin : poly_cos;
    const I negate_sin = (x < 0.0f) ^ ((octant & 4) != 0);
    const I negate_cos = ((octant - 2) & 4) == 0;
    sin_x = negate_sin ? -s : s;
    cos_x = negate_cos ? -c : c;
  }
}

// ---------------------------------------------------------------------------------------------
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
// The float AVX-512 tile: as the AVX2 one below, with 16 lanes.
template <int MR>
__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma"), noinline)) void micro_tile_avx512(
    int64_t K, const float* const* rows, int64_t a_cols, const float* B, int64_t b_rows, float* C, int64_t c_rows,
    const float* bias, bool accumulate) {
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const float *a0 = rows[0], *a1 = MR > 1 ? rows[1] : a0, *a2 = MR > 2 ? rows[2] : a0;
  const float *a3 = MR > 3 ? rows[3] : a0, *a4 = MR > 4 ? rows[4] : a0, *a5 = MR > 5 ? rows[5] : a0;
#define BK_INIT(r, lo, hi)                         \
  if (MR > r) {                                    \
    if (accumulate) {                              \
      lo = _mm512_loadu_ps(C + r * c_rows);        \
      hi = _mm512_loadu_ps(C + r * c_rows + 16);   \
    } else if (bias != nullptr) {                  \
      lo = hi = _mm512_set1_ps(bias[r]);           \
    }                                              \
  }
#define BK_FMA(r, lo, hi)                                   \
  if (MR > r) {                                             \
    const __m512 ar = _mm512_set1_ps(a##r[k * a_cols]);     \
    lo = _mm512_fmadd_ps(ar, b0, lo);                       \
    hi = _mm512_fmadd_ps(ar, b1, hi);                       \
  }
#define BK_STORE(r, lo, hi)                    \
  if (MR > r) {                                \
    _mm512_storeu_ps(C + r * c_rows, lo);      \
    _mm512_storeu_ps(C + r * c_rows + 16, hi); \
  }
  BK_TILE_ROWS(BK_INIT)
  for (int64_t k = 0; k < K; ++k) {
    const __m512 b0 = _mm512_loadu_ps(B + k * b_rows), b1 = _mm512_loadu_ps(B + k * b_rows + 16);
    BK_TILE_ROWS(BK_FMA)
  }
  BK_TILE_ROWS(BK_STORE)
#undef BK_STORE
#undef BK_FMA
#undef BK_INIT
}

// The float AVX2 tile with intrinsics, so weights are broadcast straight from memory (a pure
// load) instead of through a shuffle that competes with the FMAs. Not inlined: a call costs
// nothing beside a tile's K * 12 FMAs, and it keeps AVX2 out of the generic code.
template <int MR>
__attribute__((target("avx2,fma"), noinline)) void micro_tile_avx2(int64_t K, const float* const* rows,
                                                                  int64_t a_cols, const float* B, int64_t b_rows,
                                                                  float* C, int64_t c_rows, const float* bias,
                                                                  bool accumulate) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const float *a0 = rows[0], *a1 = MR > 1 ? rows[1] : a0, *a2 = MR > 2 ? rows[2] : a0;
  const float *a3 = MR > 3 ? rows[3] : a0, *a4 = MR > 4 ? rows[4] : a0, *a5 = MR > 5 ? rows[5] : a0;
#define BK_INIT(r, lo, hi)                        \
  if (MR > r) {                                   \
    if (accumulate) {                             \
      lo = _mm256_loadu_ps(C + r * c_rows);       \
      hi = _mm256_loadu_ps(C + r * c_rows + 8);   \
    } else if (bias != nullptr) {                 \
      lo = hi = _mm256_broadcast_ss(bias + r);    \
    }                                             \
  }
#define BK_FMA(r, lo, hi)                                     \
  if (MR > r) {                                               \
    const __m256 ar = _mm256_broadcast_ss(a##r + k * a_cols); \
    lo = _mm256_fmadd_ps(ar, b0, lo);                         \
    hi = _mm256_fmadd_ps(ar, b1, hi);                         \
  }
#define BK_STORE(r, lo, hi)                   \
  if (MR > r) {                               \
    _mm256_storeu_ps(C + r * c_rows, lo);     \
    _mm256_storeu_ps(C + r * c_rows + 8, hi); \
  }
  BK_TILE_ROWS(BK_INIT)
  for (int64_t k = 0; k < K; ++k) {
    const __m256 b0 = _mm256_loadu_ps(B + k * b_rows), b1 = _mm256_loadu_ps(B + k * b_rows + 8);
    BK_TILE_ROWS(BK_FMA)
  }
  BK_TILE_ROWS(BK_STORE)
#undef BK_STORE
#undef BK_FMA
#undef BK_INIT
}
#endif

template <class T, int Bytes, int MR>
BK_INLINE void tile_rows(int64_t K, const T* const* rows, int64_t a_cols, const T* B, int64_t b_rows, T* C,
                         int64_t c_rows, const T* bias, bool accumulate) {
#if BK_HAVE_AVX2_PATH
  if constexpr (std::is_same_v<T, float> && Bytes == 32) {
    micro_tile_avx2<MR>(K, rows, a_cols, B, b_rows, C, c_rows, bias, accumulate);
    return;
  }
  if constexpr (std::is_same_v<T, float> && Bytes == 64) {
    micro_tile_avx512<MR>(K, rows, a_cols, B, b_rows, C, c_rows, bias, accumulate);
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

// ---------------------------------------------------------------------------------------------
// Activations, one vector at a time, and their derivatives with respect to each linear map:
//   WIRE   a = cos(w f) exp(-(s g)^2):  da/df = -w sin(w f) exp(-(s g)^2),  da/dg = -2 s^2 g a
//   SIREN  a = sin(w f):                da/df = w cos(w f)
//   ReLU   a = max(f, 0):               da/df = [f > 0]

template <class T, int Bytes, int Kind>
BK_INLINE void activation(T omega, T scale, const typename Vec<T, Bytes>::type& f,
                          const typename Vec<T, Bytes>::type& g, typename Vec<T, Bytes>::type& act,
                          typename Vec<T, Bytes>::type& df, typename Vec<T, Bytes>::type& dg, bool derivative) {
  using V = typename Vec<T, Bytes>::type;
  if constexpr (Kind == kWire) {
    const V v = g * scale;
    const V gauss = vexp<T, Bytes>(-(v * v));
    V sin_u, cos_u;
    vsincos<T, Bytes>(f * omega, sin_u, cos_u);
    act = cos_u * gauss;
    if (derivative) {
      df = (-omega) * sin_u * gauss;
      dg = (T(-2) * scale) * v * act;
    }
  } else if constexpr (Kind == kSiren) {
    (void)scale;
    (void)dg;
    V sin_u, cos_u;
    vsincos<T, Bytes>(f * omega, sin_u, cos_u);
    act = sin_u;
    if (derivative) df = omega * cos_u;
  } else {
    (void)omega;
    (void)scale;
    (void)dg;
    const V zero = V{};
    act = f < zero ? zero : f;  // keeps NaN, as torch.relu does
    if (derivative) df = f > zero ? zero + T(1) : zero;
  }
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

// ---------------------------------------------------------------------------------------------
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

int64_t packed_size(int64_t dims, int64_t width, int64_t depth, int64_t maps) {
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

int64_t padded(int64_t count) { return (count + kPad - 1) / kPad * kPad; }

// ---------------------------------------------------------------------------------------------
// Per-block pieces. Matrices are unit-major with `bp` (the padded block width) columns.

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

// ---------------------------------------------------------------------------------------------
// Forward: x (dims x bp) | two activation buffers (width x bp) | last layer (maps + 1 x bp)

int64_t forward_scratch(const CoordinateMlpArgs& a) {
  return (a.dims + 2 * a.width + maps_of(a.activation) + 1) * padded(a.block);
}

template <class T>
BK_INLINE const T* hidden_weight(const Net<T>& n, int64_t layer) {
  return n.hidden + (layer - 1) * n.hidden_stride;
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

// ---------------------------------------------------------------------------------------------
// Backward: recompute the block's forward keeping each layer's input and activation
// derivative, then walk back. Scratch:
//   inputs   x (dims x bp), h_1 .. h_{L-1} (width x bp each)
//   derivs   d_0 .. d_{L-2} (units x bp each), d_{L-1} (maps x bp)
//   grad     (width x bp), transposed input (bp x width), output gradient (bp), output (bp)

int64_t backward_scratch(const CoordinateMlpArgs& a) {
  const int64_t maps = maps_of(a.activation), units = maps * a.width, L = a.depth;
  return (a.dims + (L - 1) * a.width + (L - 1) * units + maps + 2 * a.width + 2) * padded(a.block);
}

template <class T>
BK_INLINE T sum_prefix(const T* row, int64_t count) {
  T sum = 0;
  for (int64_t i = 0; i < count; ++i) sum += row[i];
  return sum;
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
    for (int64_t k = 0; k < W && a.weight_grads; ++k) {
      const T* hk = h_prev + k * bp;
      T sum = 0;
      for (int64_t i = 0; i < count; ++i) sum += dy[i] * hk[i];
      last_w_grad[j * W + k] += sum;
    }
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
    for (int64_t u = 0; u < U; ++u) {
      const T* gu = grad + (u % W) * bp;
      T* row = dy + u * bp;
      for (int64_t i = 0; i < bp; ++i) row[i] *= gu[i];
    }
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
  for (int64_t u = 0; u < U; ++u) {
    const T* gu = grad + (u % W) * bp;
    T* row = dy + u * bp;
    for (int64_t i = 0; i < bp; ++i) row[i] *= gu[i];
  }
  T* first_w_grad = const_cast<T*>(g.first_weight);
  T* first_b_grad = const_cast<T*>(g.first_bias);
  for (int64_t u = 0; u < U; ++u) {
    const T* row = dy + u * bp;
    for (int64_t c = 0; c < d && a.weight_grads; ++c) {
      const T* xc = x + c * bp;
      T sum = 0;
      for (int64_t i = 0; i < count; ++i) sum += row[i] * xc[i];
      first_w_grad[u * d + c] += sum;
    }
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
  if (a.io < kIoFloat32 || a.io > kIoFloat64) throw std::invalid_argument("coordinate_mlp: bad io dtype");
}

}  // namespace

int64_t coordinate_mlp_packed_size(int64_t dims, int64_t width, int64_t depth, int32_t activation) {
  return packed_size(dims, width, depth, maps_of(activation));
}

int64_t coordinate_mlp_scratch_elements(const CoordinateMlpArgs& args, bool backward) {
  return backward ? backward_scratch(args) : forward_scratch(args);
}

void coordinate_mlp_forward(const CoordinateMlpArgs& args, void* out, void* scratch, int num_threads) {
  check_args(args);
  if (args.num_voxels == 0) return;
  switch (args.io) {
    case kIoFloat32:
      forward_typed<float, float>(args, static_cast<float*>(out), static_cast<float*>(scratch), num_threads);
      break;
    case kIoBfloat16:
      forward_typed<float, uint16_t>(args, static_cast<uint16_t*>(out), static_cast<float*>(scratch), num_threads);
      break;
    default:
      forward_typed<double, double>(args, static_cast<double*>(out), static_cast<double*>(scratch), num_threads);
  }
}

void coordinate_mlp_backward(const CoordinateMlpArgs& args, const void* grad_out, const int64_t grad_strides[3],
                             void* grad_packed, void* partials, int64_t num_partials, void* grad_coords,
                             void* scratch) {
  check_args(args);
  if (num_partials < 1) throw std::invalid_argument("coordinate_mlp: num_partials must be positive");
  switch (args.io) {
    case kIoFloat32:
      backward_typed<float, float>(args, static_cast<const float*>(grad_out), grad_strides,
                                   static_cast<float*>(grad_packed), static_cast<float*>(partials), num_partials,
                                   static_cast<float*>(grad_coords),
                                   static_cast<float*>(scratch));
      break;
    case kIoBfloat16:
      backward_typed<float, uint16_t>(args, static_cast<const uint16_t*>(grad_out), grad_strides,
                                      static_cast<float*>(grad_packed), static_cast<float*>(partials), num_partials,
                                      static_cast<uint16_t*>(grad_coords), static_cast<float*>(scratch));
      break;
    default:
      backward_typed<double, double>(args, static_cast<const double*>(grad_out), grad_strides,
                                     static_cast<double*>(grad_packed), static_cast<double*>(partials),
                                     num_partials,
                                     static_cast<double*>(grad_coords), static_cast<double*>(scratch));
  }
}

}  // namespace cpu
}  // namespace brainkernels
