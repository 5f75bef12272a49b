// The element types of the tensors the kernels read and write: one code table for every op.
// Python passes a tensor's code (brainkernels._extension.dtype_code, which reads kDtypes from
// the module). Only standard types, so CUDA sources include it too.
#pragma once
#include <cstdint>

namespace brainkernels {

enum class Dtype : int32_t { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct DtypeEntry {
  const char* name;  // torch's name, without "torch."
  Dtype code;
  int size;  // bytes per element
};

constexpr DtypeEntry kDtypes[] = {
    {"float32", Dtype::kFloat32, 4},
    {"float64", Dtype::kFloat64, 8},
    {"float16", Dtype::kFloat16, 2},
    {"bfloat16", Dtype::kBFloat16, 2},
};

// Bytes per element of a code from the table.
constexpr int dtype_size(Dtype dtype) {
  for (const DtypeEntry& entry : kDtypes) {
    if (entry.code == dtype) return entry.size;
  }
  return 0;
}

}  // namespace brainkernels
