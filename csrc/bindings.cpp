// pybind11 module brainkernels._C. It links no libtorch: Python passes data pointers,
// sizes, strides and (for CUDA) the current stream, and owns every buffer.
#include <omp.h>
#include <pybind11/pybind11.h>

#include <string>

#include "brainkernels/bindings.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "brainkernels compiled kernels (C++/OpenMP and, when built, CUDA)";
#ifdef BRAINKERNELS_WITH_CUDA
  m.attr("cuda_built") = true;
  m.attr("cuda_architectures") = std::string(BRAINKERNELS_CUDA_ARCHS);
#else
  m.attr("cuda_built") = false;
  m.attr("cuda_architectures") = std::string();
#endif
  m.def("openmp_max_threads", &omp_get_max_threads);
  brainkernels::bind_patches3d(m);
  brainkernels::bind_group_norm_silu(m);
  brainkernels::bind_coordinate_mlp(m);
}
