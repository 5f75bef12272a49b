// Bindings of the extract_patches3d kernels (CPU, and CUDA when built).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>
#include <string>

#include "common/bindings.h"
#include "extract_patches3d/extract_patches3d.h"

namespace py = pybind11;
using brainkernels::ExtractPatches3dArgs;
using Shape4 = std::array<int64_t, 4>;

namespace {

ExtractPatches3dArgs make_args(const Shape4& shape, const Shape4& strides, uintptr_t centers,
                           int64_t num_patches, int64_t size) {
  ExtractPatches3dArgs args;
  args.volume = {shape[0], shape[1], shape[2], shape[3], strides[0], strides[1], strides[2], strides[3]};
  args.centers = reinterpret_cast<const int64_t*>(centers);
  args.num_patches = num_patches;
  args.size = size;
  return args;
}

Shape4 contiguous_strides(const Shape4& shape) {
  return {shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3], 1};
}

void forward_cpu(uintptr_t volume, int32_t dtype, Shape4 shape, Shape4 strides, uintptr_t centers,
                 int64_t num_patches, int64_t size, uint64_t padding_bits, uintptr_t patches,
                 int num_threads) {
  const ExtractPatches3dArgs args = make_args(shape, strides, centers, num_patches, size);
  const brainkernels::Dtype volume_dtype = brainkernels::dtype_arg(dtype, "extract_patches3d");
  py::gil_scoped_release release;
  brainkernels::cpu::extract_patches3d_forward(args, reinterpret_cast<const void*>(volume), volume_dtype,
                                               padding_bits, reinterpret_cast<void*>(patches), num_threads);
}

void backward_cpu(uintptr_t grad_patches, int32_t dtype, Shape4 shape, uintptr_t centers,
                  int64_t num_patches, int64_t size, uintptr_t grad_volume, int num_threads) {
  const ExtractPatches3dArgs args = make_args(shape, contiguous_strides(shape), centers, num_patches, size);
  const brainkernels::Dtype grad_dtype = brainkernels::dtype_arg(dtype, "extract_patches3d");
  py::gil_scoped_release release;
  brainkernels::cpu::extract_patches3d_backward(args, reinterpret_cast<const void*>(grad_patches), grad_dtype,
                                                reinterpret_cast<void*>(grad_volume), num_threads);
}

#ifdef BRAINKERNELS_WITH_CUDA
void raise_on_error(const char* message) {
  if (message != nullptr) throw std::runtime_error(std::string("CUDA error: ") + message);
}

void forward_cuda(uintptr_t volume, int32_t dtype, Shape4 shape, Shape4 strides, uintptr_t centers,
                  int64_t num_patches, int64_t size, uint64_t padding_bits, uintptr_t patches,
                  uintptr_t stream) {
  const ExtractPatches3dArgs args = make_args(shape, strides, centers, num_patches, size);
  const brainkernels::Dtype volume_dtype = brainkernels::dtype_arg(dtype, "extract_patches3d");
  const char* error;
  {
    py::gil_scoped_release release;
    error = brainkernels::cuda::extract_patches3d_forward(args, reinterpret_cast<const void*>(volume),
                                                          volume_dtype, padding_bits,
                                                          reinterpret_cast<void*>(patches), stream);
  }
  raise_on_error(error);
}

void backward_cuda(uintptr_t grad_patches, int32_t dtype, Shape4 shape, uintptr_t centers,
                   int64_t num_patches, int64_t size, uintptr_t grad_volume, uintptr_t stream) {
  const ExtractPatches3dArgs args = make_args(shape, contiguous_strides(shape), centers, num_patches, size);
  const brainkernels::Dtype grad_dtype = brainkernels::dtype_arg(dtype, "extract_patches3d");
  const char* error;
  {
    py::gil_scoped_release release;
    error = brainkernels::cuda::extract_patches3d_backward(args, reinterpret_cast<const void*>(grad_patches),
                                                           grad_dtype, reinterpret_cast<void*>(grad_volume),
                                                           stream);
  }
  raise_on_error(error);
}
#endif

}  // namespace

namespace brainkernels {

void bind_extract_patches3d(py::module_& m) {
#ifdef BRAINKERNELS_WITH_CUDA
  m.def("extract_patches3d_forward_cuda", &forward_cuda);
  m.def("extract_patches3d_backward_cuda", &backward_cuda);
#endif
  m.def("extract_patches3d_forward_cpu", &forward_cpu);
  m.def("extract_patches3d_backward_cpu", &backward_cpu);
}

}  // namespace brainkernels
