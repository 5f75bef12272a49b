// pybind11 module brainkernels._C. It links no libtorch: Python passes data pointers,
// sizes, strides and (for CUDA) the current stream, and owns every buffer.
#include <omp.h>
#include <pybind11/pybind11.h>

#include <string>

#include "common/bindings.h"
#include "common/cpu_isa.h"
#include "common/dtype.h"

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
  m.def("cpu_isa_best", [] { return std::string(brainkernels::cpu::cpu_isa_name(brainkernels::cpu::cpu_isa_best())); });
  m.def("cpu_isa_active", [] { return std::string(brainkernels::cpu::cpu_isa_name(brainkernels::cpu::cpu_isa_active())); });
  m.def("cpu_isa_is_forced", &brainkernels::cpu::cpu_isa_is_forced);
  m.def("cpu_isa_force", &brainkernels::cpu::cpu_isa_force, "force an instruction set (avx512, avx2, baseline; '' = the best)");
  pybind11::dict dtype_codes;  // {torch dtype name: code}, the table of common/dtype.h
  for (const brainkernels::DtypeEntry& entry : brainkernels::kDtypes) {
    dtype_codes[entry.name] = static_cast<int32_t>(entry.code);
  }
  m.attr("dtype_codes") = dtype_codes;
  brainkernels::bind_extract_patches3d(m);
  brainkernels::bind_group_norm_silu(m);
  brainkernels::bind_coordinate_mlp(m);
}
