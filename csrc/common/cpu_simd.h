// Vector types and element conversions shared by the CPU kernels.
//
// Every function is always inlined, so it compiles into the instruction set of its caller: each
// op's AVX-512, AVX2 and baseline variants (built under GCC target pragmas or attributes and
// chosen at run time, common/cpu_isa.h) get their own vector code from this one definition.
// Include it before any target region, so that an out-of-line copy, should the compiler make
// one, is baseline code that every CPU runs.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#define BK_INLINE __attribute__((always_inline)) inline

#if defined(__GNUC__) && !defined(__clang__)
// Vectors wider than 16 bytes only ever live inside always-inlined code of an AVX2 or AVX-512
// instantiation, so the ABI of passing them to a call never matters.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace brainkernels {
namespace cpu {

BK_INLINE float float_from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

BK_INLINE uint32_t bits_of(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

// IEEE binary16 <-> binary32 and bfloat16 <-> float without hardware support, after F. Giesen's
// conversions: exact for every half, round to nearest even for every float (as torch does),
// NaN stays NaN (quiet), overflow gives infinity. Every case is computed and one is selected
// with integer comparisons, so loops that convert vectorise.
// cond ? a : b with bit masks: a ternary lets GCC move the float arithmetic of an operand into
// a branch, and a branch with float arithmetic is not vectorised (it might trap).
BK_INLINE uint32_t select_bits(bool cond, uint32_t a, uint32_t b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(cond);
  return (a & mask) | (b & ~mask);
}

BK_INLINE float half_to_float(uint16_t half) {
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

BK_INLINE uint16_t float_to_half(float value) {
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

BK_INLINE float bfloat16_to_float(uint16_t value) { return float_from_bits(static_cast<uint32_t>(value) << 16); }

BK_INLINE uint16_t float_to_bfloat16(float value) {
  const uint32_t bits = bits_of(value);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (bits >> 16) | 0x0040u;
  return static_cast<uint16_t>(select_bits((bits & 0x7fffffffu) > 0x7f800000u, quiet_nan, rounded));
}

// GCC vector extensions: a vector of Bytes / sizeof(T) lanes, and lane-wise integers of T's
// width for masks and bit casts.
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

}  // namespace cpu
}  // namespace brainkernels
