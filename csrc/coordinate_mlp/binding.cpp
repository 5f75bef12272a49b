// Bindings of the coordinate_mlp kernels (CPU). Python passes the network as
// (dims, width, depth, activation, omega, scale, residual) and the voxels as
// (shape, coords, coords_strides, grid_offset, grid_divisor, io, block); the backward takes
// weight_grads beside them; see
// coordinate_mlp.h for their meaning.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <tuple>

#include "common/bindings.h"
#include "coordinate_mlp/coordinate_mlp.h"

namespace py = pybind11;
using brainkernels::CoordinateMlpArgs;

namespace {

using Network = std::tuple<int64_t, int64_t, int64_t, int32_t, double, double, bool>;
using Voxels = std::tuple<std::array<int64_t, 3>, uintptr_t, std::array<int64_t, 2>, std::array<double, 3>,
                          std::array<double, 3>, int32_t, int64_t>;

CoordinateMlpArgs make_args(const Network& network, uintptr_t packed, const Voxels& voxels) {
  CoordinateMlpArgs a{};
  std::tie(a.dims, a.width, a.depth, a.activation, a.omega, a.scale, a.residual) = network;
  a.packed = reinterpret_cast<const void*>(packed);
  const auto& [shape, coords, coords_stride, offset, divisor, io, block] = voxels;
  for (int k = 0; k < 3; ++k) {
    a.shape[k] = shape[k];
    a.grid_offset[k] = offset[k];
    a.grid_divisor[k] = divisor[k];
  }
  a.num_voxels = shape[0] * shape[1] * shape[2];
  a.coords = reinterpret_cast<const void*>(coords);
  a.coords_stride[0] = coords_stride[0];
  a.coords_stride[1] = coords_stride[1];
  a.io = brainkernels::dtype_arg(io, "coordinate_mlp");
  a.block = block;
  return a;
}

int64_t scratch_elements(const Network& network, const Voxels& voxels, bool backward) {
  return brainkernels::cpu::coordinate_mlp_scratch_elements(make_args(network, 0, voxels), backward);
}

void forward_cpu(const Network& network, uintptr_t packed, const Voxels& voxels, uintptr_t out, uintptr_t scratch,
                 int num_threads) {
  const CoordinateMlpArgs args = make_args(network, packed, voxels);
  py::gil_scoped_release release;
  brainkernels::cpu::coordinate_mlp_forward(args, reinterpret_cast<void*>(out), reinterpret_cast<void*>(scratch),
                                            num_threads);
}

void backward_cpu(const Network& network, uintptr_t packed, const Voxels& voxels, bool weight_grads,
                  uintptr_t grad_out, std::array<int64_t, 3> grad_strides, uintptr_t grad_packed,
                  uintptr_t partials, int64_t num_partials, uintptr_t grad_coords, uintptr_t scratch) {
  CoordinateMlpArgs args = make_args(network, packed, voxels);
  args.weight_grads = weight_grads;
  py::gil_scoped_release release;
  brainkernels::cpu::coordinate_mlp_backward(args, reinterpret_cast<const void*>(grad_out), grad_strides.data(),
                                             reinterpret_cast<void*>(grad_packed), reinterpret_cast<void*>(partials),
                                             num_partials, reinterpret_cast<void*>(grad_coords),
                                             reinterpret_cast<void*>(scratch));
}

}  // namespace

namespace brainkernels {

void bind_coordinate_mlp(py::module_& m) {
  m.def("coordinate_mlp_packed_size", &cpu::coordinate_mlp_packed_size);
  m.def("coordinate_mlp_scratch_elements", &scratch_elements);
  m.def("coordinate_mlp_forward_cpu", &forward_cpu);
  m.def("coordinate_mlp_backward_cpu", &backward_cpu);
}

}  // namespace brainkernels
