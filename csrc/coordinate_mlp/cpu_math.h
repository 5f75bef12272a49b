// Vector math of the coordinate MLP's CPU kernels: exp, sin/cos and the activations with their
// derivatives, on GCC vectors of any width (the caller's instruction set, common/cpu_simd.h).
#pragma once
#include <cmath>
#include <type_traits>

#include "common/cpu_simd.h"
#include "coordinate_mlp/coordinate_mlp.h"

namespace brainkernels {
namespace cpu {
namespace mlp {

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

}  // namespace mlp
}  // namespace cpu
}  // namespace brainkernels
