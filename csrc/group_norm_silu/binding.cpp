// Bindings of the group_norm_silu CPU kernels. Python passes data pointers (0 for an absent
// skip), (batch, channels, spatial), element strides of the (N, C, S) views, and owns every buffer.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>

#include "common/bindings.h"
#include "group_norm_silu/group_norm_silu.h"

namespace py = pybind11;
using brainkernels::GroupNormSiluArgs;
using brainkernels::RowsView;
using Shape3 = std::array<int64_t, 3>;

namespace {

RowsView rows_view(uintptr_t data, const Shape3& strides) {
  return {reinterpret_cast<const void*>(data), strides[0], strides[1], strides[2]};
}

GroupNormSiluArgs make_args(int dtype, int activation, Shape3 shape, int64_t chunk, uintptr_t h, Shape3 h_strides,
                            uintptr_t skip, Shape3 skip_strides) {
  if (activation < 0 || activation > 1) throw std::invalid_argument("group_norm_silu: activation code must be 0 or 1");
  if (shape[0] < 0 || shape[1] < 0 || shape[2] < 1 || chunk < 1) {
    throw std::invalid_argument("group_norm_silu: sizes must be non-negative, spatial and chunk at least 1");
  }
  GroupNormSiluArgs args;
  args.batch = shape[0];
  args.channels = shape[1];
  args.spatial = shape[2];
  args.chunk = chunk;
  args.num_chunks = (shape[2] + chunk - 1) / chunk;
  args.dtype = brainkernels::dtype_arg(dtype, "group_norm_silu");
  args.activation = static_cast<brainkernels::GnActivation>(activation);
  args.h = rows_view(h, h_strides);
  args.skip = rows_view(skip, skip_strides);
  return args;
}

const void* in(uintptr_t address) { return reinterpret_cast<const void*>(address); }
void* out(uintptr_t address) { return reinterpret_cast<void*>(address); }

void moments(int dtype, Shape3 shape, int64_t chunk, uintptr_t h, Shape3 h_strides, uintptr_t skip,
             Shape3 skip_strides, uintptr_t mean, uintptr_t m2, int num_threads) {
  const GroupNormSiluArgs args = make_args(dtype, 0, shape, chunk, h, h_strides, skip, skip_strides);
  py::gil_scoped_release release;
  brainkernels::cpu::group_norm_silu_moments(args, out(mean), out(m2), num_threads);
}

void forward(int dtype, int activation, Shape3 shape, int64_t chunk, uintptr_t h, Shape3 h_strides, uintptr_t skip,
             Shape3 skip_strides, uintptr_t center, uintptr_t alpha, uintptr_t beta, uintptr_t result,
             Shape3 result_strides, int num_threads) {
  const GroupNormSiluArgs args = make_args(dtype, activation, shape, chunk, h, h_strides, skip, skip_strides);
  if (result_strides[2] != 1 && shape[2] > 1) {
    throw std::invalid_argument("group_norm_silu: the output must have unit stride along a row");
  }
  py::gil_scoped_release release;
  brainkernels::cpu::group_norm_silu_forward(args, in(center), in(alpha), in(beta), out(result), result_strides[0],
                                             result_strides[1], num_threads);
}

void backward_sums(int dtype, int activation, Shape3 shape, int64_t chunk, uintptr_t h, Shape3 h_strides,
                   uintptr_t skip, Shape3 skip_strides, uintptr_t grad_out, Shape3 grad_strides, uintptr_t center,
                   uintptr_t alpha, uintptr_t beta, uintptr_t xa, uintptr_t sums, int num_threads) {
  const GroupNormSiluArgs args = make_args(dtype, activation, shape, chunk, h, h_strides, skip, skip_strides);
  const RowsView grad = rows_view(grad_out, grad_strides);
  py::gil_scoped_release release;
  brainkernels::cpu::group_norm_silu_backward_sums(args, grad, in(center), in(alpha), in(beta), in(xa), out(sums),
                                                   num_threads);
}

void backward_input(int dtype, int activation, Shape3 shape, int64_t chunk, uintptr_t h, Shape3 h_strides,
                    uintptr_t skip, Shape3 skip_strides, uintptr_t grad_out, Shape3 grad_strides, uintptr_t center,
                    uintptr_t alpha, uintptr_t beta, uintptr_t p, uintptr_t q, uintptr_t r, uintptr_t grad_input,
                    int num_threads) {
  const GroupNormSiluArgs args = make_args(dtype, activation, shape, chunk, h, h_strides, skip, skip_strides);
  const RowsView grad = rows_view(grad_out, grad_strides);
  py::gil_scoped_release release;
  brainkernels::cpu::group_norm_silu_backward_input(args, grad, in(center), in(alpha), in(beta), in(p), in(q), in(r),
                                                    out(grad_input), num_threads);
}

}  // namespace

namespace brainkernels {

void bind_group_norm_silu(py::module_& m) {
  m.def("group_norm_silu_moments_cpu", &moments);
  m.def("group_norm_silu_forward_cpu", &forward);
  m.def("group_norm_silu_backward_sums_cpu", &backward_sums);
  m.def("group_norm_silu_backward_input_cpu", &backward_input);
}

}  // namespace brainkernels
