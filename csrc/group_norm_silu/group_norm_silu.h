// Plain-data bridge between the bindings and the C++ kernels of brainkernels::group_norm_silu.
// Holds only standard integer types, so a CUDA source could include it too.
//
// The op y = act(GN(x) * (1 + scale) + shift), x = (h + skip) / 2 + emb, is split by the Python
// layer into per-element passes over "rows" (one row = the spatial voxels of one (sample, channel))
// and tiny per-(sample, channel) coefficient arithmetic done with torch between the passes.
// Every pass reads w = h + skip (or h) and folds everything else into per-row coefficients, so
// the kernels below know nothing about groups, emb, gamma, beta, scale or shift. With
// d = w - center[row] (center: the w at which x equals its group's mean, so d is small and
// exact where |mean| >> std):
//   moments         per (row, chunk): mean and sum of squared deviations of w
//   forward         out = act(u), u = d * alpha[row] + beta[row]
//   backward_sums   per (row, chunk): sum g_u, sum g_u * xhat, sum xhat,
//                   with g_u = grad_out * act'(u) and xhat = d * xa[row] (the normalised x)
//   backward_input  grad = g_u * p[row] + d * q[row] + r[row]
// Rows are split into chunks of `chunk` voxels, one OpenMP task per (row, chunk), so a batch
// of one sample with few channels still uses every core; the Python layer combines the
// per-chunk partial results (Chan's parallel variance formula for the moments).
#pragma once
#include <cstdint>

#include "common/dtype.h"

namespace brainkernels {

enum class GnActivation : int { kNone = 0, kSilu = 1 };

// A tensor seen as (batch, channels, spatial) through element strides, so any layout whose
// spatial dimensions collapse into one (contiguous, channels-last, a broadcast gradient with
// stride 0) is read in place.
struct RowsView {
  const void* data;  // nullptr when absent (no skip)
  int64_t stride_n, stride_c, stride_s;
};

struct GroupNormSiluArgs {
  int64_t batch, channels, spatial;
  int64_t chunk;       // voxels per task along a row, >= 1
  int64_t num_chunks;  // ceil(spatial / chunk)
  Dtype dtype;         // of h, skip, grad_out and the outputs
  GnActivation activation;
  RowsView h, skip;
};

namespace cpu {
// Per-row coefficient arrays (center, alpha, beta, xa, p, q, r) are contiguous (batch * channels)
// arrays of the compute type: double for kFloat64, float otherwise. Partial-result outputs are
// contiguous arrays of that type too: moments writes mean and m2 as (rows, num_chunks);
// backward_sums writes (3, rows, num_chunks). Element outputs are (batch, channels, spatial) in
// `dtype`: grad_input contiguous, forward's out with unit stride along a row and the given row
// strides (so it can write into a slice of a larger buffer). Statistics are accumulated in double.
void group_norm_silu_moments(const GroupNormSiluArgs& args, void* mean, void* m2, int num_threads);
void group_norm_silu_forward(const GroupNormSiluArgs& args, const void* center, const void* alpha,
                             const void* beta, void* out, int64_t out_stride_n, int64_t out_stride_c,
                             int num_threads);
void group_norm_silu_backward_sums(const GroupNormSiluArgs& args, const RowsView& grad_out,
                                   const void* center, const void* alpha, const void* beta,
                                   const void* xa, void* sums, int num_threads);
void group_norm_silu_backward_input(const GroupNormSiluArgs& args, const RowsView& grad_out,
                                    const void* center, const void* alpha, const void* beta,
                                    const void* p, const void* q, const void* r, void* grad_input,
                                    int num_threads);
}  // namespace cpu

}  // namespace brainkernels
