// Bindings of the coordinate_mlp kernels (not written yet).
#include "brainkernels/bindings.h"

namespace brainkernels {

void bind_coordinate_mlp(pybind11::module_&) {}

}  // namespace brainkernels
