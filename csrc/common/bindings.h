// Each op binds its kernels into the module in its own csrc/<op>/binding.cpp.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/dtype.h"

namespace brainkernels {
void bind_extract_patches3d(pybind11::module_& m);
void bind_group_norm_silu(pybind11::module_& m);
void bind_coordinate_mlp(pybind11::module_& m);

// A dtype code from Python, checked against the table; `op` names the op in the error.
inline Dtype dtype_arg(int32_t code, const char* op) {
  for (const DtypeEntry& entry : kDtypes) {
    if (static_cast<int32_t>(entry.code) == code) return entry.code;
  }
  throw std::invalid_argument(std::string(op) + ": unknown dtype code " + std::to_string(code));
}
}  // namespace brainkernels
