// Each op binds its kernels into the module in its own csrc/<op>/binding.cpp.
#pragma once
#include <pybind11/pybind11.h>

namespace brainkernels {
void bind_extract_patches3d(pybind11::module_& m);
void bind_group_norm_silu(pybind11::module_& m);
void bind_coordinate_mlp(pybind11::module_& m);
}  // namespace brainkernels
