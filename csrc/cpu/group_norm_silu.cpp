// C++/OpenMP kernels of brainkernels::group_norm_silu; contracts in brainkernels/group_norm_silu.h.
//
// float16 and bfloat16 are read and written natively, converting bits to float per element
// (round to nearest even on the way out, as torch does), so 16-bit tensors are never copied
// to float32 as a whole. Per-element math runs in float (double for float64 tensors); sums
// over voxels are accumulated in double.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "brainkernels/group_norm_silu.h"

namespace brainkernels {
namespace cpu {
namespace {

struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

inline float float_from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

inline uint32_t bits_of(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

// IEEE binary16 <-> binary32 and bfloat16 -> float without hardware support, after F. Giesen's
// conversions: exact for every half, round to nearest even for every float, NaN stays NaN,
// overflow gives infinity. Every case is computed and one is selected with integer
// comparisons, so loops that convert vectorise.
// cond ? a : b with bit masks: a ternary lets GCC move the float arithmetic of an operand into
// a branch, and a branch with float arithmetic is not vectorised (it might trap).
inline uint32_t select_bits(bool cond, uint32_t a, uint32_t b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(cond);
  return (a & mask) | (b & ~mask);
}

inline float half_to_float(uint16_t half) {
  const uint32_t shifted_exponent = 0x7c00u << 13;
  const uint32_t bits = static_cast<uint32_t>(half & 0x7fffu) << 13;
  const uint32_t exponent = bits & shifted_exponent;
  const uint32_t normal = bits + ((127u - 15u) << 23);
  const uint32_t special = normal + ((128u - 16u) << 23);  // infinity or NaN
  // zero or subnormal: renormalise through a float subtraction
  const uint32_t subnormal = bits_of(float_from_bits(normal + (1u << 23)) - float_from_bits(113u << 23));
  const uint32_t magnitude =
      select_bits(exponent == shifted_exponent, special, select_bits(exponent == 0, subnormal, normal));
  return float_from_bits(magnitude | (static_cast<uint32_t>(half & 0x8000u) << 16));
}

inline uint16_t float_to_half(float value) {
  const uint32_t all = bits_of(value);
  const uint32_t sign = all & 0x80000000u;
  const uint32_t bits = all ^ sign;
  const uint32_t special = bits > (255u << 23) ? 0x7e00u : 0x7c00u;  // NaN, or overflow to infinity
  // subnormal or zero: let a float addition round
  const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  const uint32_t subnormal = bits_of(float_from_bits(bits) + float_from_bits(magic)) - magic;
  const uint32_t normal = (bits + ((15u - 127u) << 23) + 0xfffu + ((bits >> 13) & 1u)) >> 13;
  const uint32_t half =
      select_bits(bits >= (127u + 16u) << 23, special, select_bits(bits < (113u << 23), subnormal, normal));
  return static_cast<uint16_t>(half | (sign >> 16));
}

inline float bfloat16_to_float(uint16_t value) { return float_from_bits(static_cast<uint32_t>(value) << 16); }

inline uint16_t float_to_bfloat16(float value) {
  const uint32_t bits = bits_of(value);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (bits >> 16) | 0x0040u;
  return static_cast<uint16_t>(select_bits((bits & 0x7fffffffu) > 0x7f800000u, quiet_nan, rounded));
}

template <typename T>
struct Element {
  using Compute = T;
  static T load(const T* p) { return *p; }
  static void store(T* p, T value) { *p = value; }
};
template <>
struct Element<Half> {
  using Compute = float;
  static float load(const Half* p) { return half_to_float(p->bits); }
  static void store(Half* p, float value) { p->bits = float_to_half(value); }
};
template <>
struct Element<BFloat16> {
  using Compute = float;
  static float load(const BFloat16* p) { return bfloat16_to_float(p->bits); }
  static void store(BFloat16* p, float value) { p->bits = float_to_bfloat16(value); }
};

// One row (sample n, channel c) of a RowsView; kUnit: the stride along the row is known to be 1,
// which lets the compiler vectorise.
template <typename T, bool kUnit>
struct Row {
  const T* data;
  int64_t stride;
  Row(const RowsView& view, int64_t n, int64_t c)
      : data(static_cast<const T*>(view.data) + n * view.stride_n + c * view.stride_c), stride(view.stride_s) {}
  typename Element<T>::Compute operator[](int64_t i) const { return Element<T>::load(data + (kUnit ? i : i * stride)); }
};

// w = h + skip, or h.
template <typename T, bool kSkip, bool kUnit>
struct Input {
  Row<T, kUnit> h, skip;
  Input(const GroupNormSiluArgs& a, int64_t n, int64_t c)
      : h(a.h, n, c), skip(kSkip ? a.skip : a.h, n, c) {}
  typename Element<T>::Compute operator[](int64_t i) const { return kSkip ? h[i] + skip[i] : h[i]; }
};

// exp for float written so that loops using it vectorise (std::exp does not without
// -ffast-math): Cody-Waite range reduction and Cephes' polynomial, within 1 ulp of exp on
// [-87.3, 87.3]. Arguments beyond are clamped (sigmoid is 0 or 1 in float there anyway), with
// integer operations on the bits because float comparisons block GCC's vectoriser; NaN becomes
// a finite value, and the callers propagate NaN through their other factor u.
inline float exp_vectorizable(float x) {
  const uint32_t bits = bits_of(x);
  const int32_t limit = static_cast<int32_t>(bits_of(87.3f));
  int32_t magnitude = static_cast<int32_t>(bits & 0x7fffffffu);
  magnitude = magnitude < limit ? magnitude : limit;
  x = float_from_bits((bits & 0x80000000u) | static_cast<uint32_t>(magnitude));
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const float shifted = x * 1.44269504088896341f + magic;
  const float n = shifted - magic;
  const int32_t exponent = static_cast<int32_t>(bits_of(shifted) - bits_of(magic));
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  return y * float_from_bits(static_cast<uint32_t>(exponent + 127) << 23);
}

inline float sigmoid(float u) { return 1.0f / (1.0f + exp_vectorizable(-u)); }
inline double sigmoid(double u) { return 1.0 / (1.0 + std::exp(-u)); }

template <bool kSilu, typename C>
inline C activation(C u) {
  return kSilu ? u * sigmoid(u) : u;
}

template <bool kSilu, typename C>
inline C activation_grad(C u) {
  if (!kSilu) return C(1);
  const C s = sigmoid(u);
  return s * (C(1) + u * (C(1) - s));
}

// Calls body(task, row, n, c, begin, end) for every (row, chunk), in parallel.
template <typename Body>
void for_each_chunk(const GroupNormSiluArgs& a, int num_threads, Body&& body) {
  const int64_t tasks = a.batch * a.channels * a.num_chunks;
#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t row = task / a.num_chunks, chunk = task % a.num_chunks;
    const int64_t begin = chunk * a.chunk, end = std::min(a.spatial, begin + a.chunk);
    body(task, row, row / a.channels, row % a.channels, begin, end);
  }
}

template <typename T>
struct Tag {
  using type = T;
};

// Calls fn(Tag<T>, bool_constant<kSkip>, bool_constant<kUnit>) with the element type of args.dtype.
template <typename Fn>
void dispatch(const GroupNormSiluArgs& a, bool unit, Fn&& fn) {
  auto with_type = [&](auto tag) {
    const bool skip = a.skip.data != nullptr;
    if (skip && unit) fn(tag, std::true_type{}, std::true_type{});
    if (skip && !unit) fn(tag, std::true_type{}, std::false_type{});
    if (!skip && unit) fn(tag, std::false_type{}, std::true_type{});
    if (!skip && !unit) fn(tag, std::false_type{}, std::false_type{});
  };
  switch (a.dtype) {
    case GnDtype::kFloat32: with_type(Tag<float>{}); break;
    case GnDtype::kFloat64: with_type(Tag<double>{}); break;
    case GnDtype::kFloat16: with_type(Tag<Half>{}); break;
    case GnDtype::kBFloat16: with_type(Tag<BFloat16>{}); break;
    default: throw std::invalid_argument("group_norm_silu: unknown dtype code");
  }
}

template <typename Fn>
void dispatch_activation(const GroupNormSiluArgs& a, Fn&& fn) {
  if (a.activation == GnActivation::kSilu) {
    fn(std::true_type{});
  } else if (a.activation == GnActivation::kNone) {
    fn(std::false_type{});
  } else {
    throw std::invalid_argument("group_norm_silu: unknown activation code");
  }
}

bool unit_stride(const GroupNormSiluArgs& a, const RowsView* grad_out = nullptr) {
  return a.h.stride_s == 1 && (a.skip.data == nullptr || a.skip.stride_s == 1) &&
         (grad_out == nullptr || grad_out->stride_s == 1);
}

}  // namespace

void group_norm_silu_moments(const GroupNormSiluArgs& a, void* mean_out, void* m2_out, int num_threads) {
  dispatch(a, unit_stride(a), [&](auto tag, auto skip, auto unit) {
    using T = typename decltype(tag)::type;
    using C = typename Element<T>::Compute;
    C* mean = static_cast<C*>(mean_out);
    C* m2 = static_cast<C*>(m2_out);
    for_each_chunk(a, num_threads, [&](int64_t task, int64_t, int64_t n, int64_t c, int64_t begin, int64_t end) {
      const Input<T, decltype(skip)::value, decltype(unit)::value> w(a, n, c);
      // Sums of deviations from the chunk's first value: no cancellation when |mean| >> std.
      const double pivot = static_cast<double>(w[begin]);
      double s1 = 0.0, s2 = 0.0;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t i = begin; i < end; ++i) {
        const double d = static_cast<double>(w[i]) - pivot;
        s1 += d;
        s2 += d * d;
      }
      const double count = static_cast<double>(end - begin);
      mean[task] = static_cast<C>(pivot + s1 / count);
      m2[task] = static_cast<C>(std::max(0.0, s2 - s1 * s1 / count));
    });
  });
}

void group_norm_silu_forward(const GroupNormSiluArgs& a, const void* center_in, const void* alpha_in,
                             const void* beta_in, void* out_data, int num_threads) {
  dispatch(a, unit_stride(a), [&](auto tag, auto skip, auto unit) {
    using T = typename decltype(tag)::type;
    using C = typename Element<T>::Compute;
    const C* center = static_cast<const C*>(center_in);
    const C* alpha = static_cast<const C*>(alpha_in);
    const C* beta = static_cast<const C*>(beta_in);
    dispatch_activation(a, [&](auto silu) {
      for_each_chunk(a, num_threads, [&](int64_t, int64_t row, int64_t n, int64_t c, int64_t begin, int64_t end) {
        const Input<T, decltype(skip)::value, decltype(unit)::value> w(a, n, c);
        const C middle = center[row], scale = alpha[row], offset = beta[row];
        T* out = static_cast<T*>(out_data) + row * a.spatial;
#pragma omp simd
        for (int64_t i = begin; i < end; ++i) {
          Element<T>::store(out + i, activation<decltype(silu)::value>((w[i] - middle) * scale + offset));
        }
      });
    });
  });
}

void group_norm_silu_backward_sums(const GroupNormSiluArgs& a, const RowsView& grad_out, const void* center_in,
                                   const void* alpha_in, const void* beta_in, const void* xa_in, void* sums_out,
                                   int num_threads) {
  dispatch(a, unit_stride(a, &grad_out), [&](auto tag, auto skip, auto unit) {
    using T = typename decltype(tag)::type;
    using C = typename Element<T>::Compute;
    const C* alpha = static_cast<const C*>(alpha_in);
    const C* beta = static_cast<const C*>(beta_in);
    const C* center = static_cast<const C*>(center_in);
    const C* xa = static_cast<const C*>(xa_in);
    C* sums = static_cast<C*>(sums_out);
    const int64_t tasks = a.batch * a.channels * a.num_chunks;
    dispatch_activation(a, [&](auto silu) {
      for_each_chunk(a, num_threads, [&](int64_t task, int64_t row, int64_t n, int64_t c, int64_t begin, int64_t end) {
        constexpr bool kUnit = decltype(unit)::value;
        const Input<T, decltype(skip)::value, kUnit> w(a, n, c);
        const Row<T, kUnit> grad(grad_out, n, c);
        const C middle = center[row], scale = alpha[row], offset = beta[row], x_scale = xa[row];
        double sum_gu = 0.0, sum_gu_xhat = 0.0, sum_xhat = 0.0;
#pragma omp simd reduction(+ : sum_gu, sum_gu_xhat, sum_xhat)
        for (int64_t i = begin; i < end; ++i) {
          const C d = w[i] - middle;
          const C gu = grad[i] * activation_grad<decltype(silu)::value>(d * scale + offset);
          const C xhat = d * x_scale;
          sum_gu += gu;
          sum_gu_xhat += static_cast<double>(gu) * xhat;
          sum_xhat += xhat;
        }
        sums[task] = static_cast<C>(sum_gu);
        sums[tasks + task] = static_cast<C>(sum_gu_xhat);
        sums[2 * tasks + task] = static_cast<C>(sum_xhat);
      });
    });
  });
}

void group_norm_silu_backward_input(const GroupNormSiluArgs& a, const RowsView& grad_out, const void* center_in,
                                    const void* alpha_in, const void* beta_in, const void* p_in, const void* q_in,
                                    const void* r_in, void* grad_input, int num_threads) {
  dispatch(a, unit_stride(a, &grad_out), [&](auto tag, auto skip, auto unit) {
    using T = typename decltype(tag)::type;
    using C = typename Element<T>::Compute;
    const C* center = static_cast<const C*>(center_in);
    const C* alpha = static_cast<const C*>(alpha_in);
    const C* beta = static_cast<const C*>(beta_in);
    const C* p = static_cast<const C*>(p_in);
    const C* q = static_cast<const C*>(q_in);
    const C* r = static_cast<const C*>(r_in);
    dispatch_activation(a, [&](auto silu) {
      for_each_chunk(a, num_threads, [&](int64_t, int64_t row, int64_t n, int64_t c, int64_t begin, int64_t end) {
        constexpr bool kUnit = decltype(unit)::value;
        const Input<T, decltype(skip)::value, kUnit> w(a, n, c);
        const Row<T, kUnit> grad(grad_out, n, c);
        const C middle = center[row], scale = alpha[row], offset = beta[row];
        const C grad_scale = p[row], d_scale = q[row], constant = r[row];
        T* out = static_cast<T*>(grad_input) + row * a.spatial;
#pragma omp simd
        for (int64_t i = begin; i < end; ++i) {
          const C d = w[i] - middle;
          const C gu = grad[i] * activation_grad<decltype(silu)::value>(d * scale + offset);
          Element<T>::store(out + i, gu * grad_scale + d * d_scale + constant);
        }
      });
    });
  });
}

}  // namespace cpu
}  // namespace brainkernels
