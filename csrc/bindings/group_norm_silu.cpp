// Bindings of the group_norm_silu kernels (not written yet).
#include "brainkernels/bindings.h"

namespace brainkernels {

void bind_group_norm_silu(pybind11::module_&) {}

}  // namespace brainkernels
