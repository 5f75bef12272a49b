"""brainkernels ops: each a ``torch.library.custom_op`` in the ``brainkernels::`` namespace,
with a fake (meta) implementation, an autograd formula and a plain-PyTorch reference (the two
inference-only halves of group_norm_silu, for slabs of a volume, have no autograd formula)."""

from brainkernels.ops.coordinate_mlp import coordinate_mlp, coordinate_mlp_reference, grid_coordinates
from brainkernels.ops.extract_patches3d import (
    MAX_PATCH_SIZE,
    extract_patches3d,
    extract_patches3d_backward_reference,
    extract_patches3d_reference,
)
from brainkernels.ops.group_norm_silu import (
    group_norm_silu,
    group_norm_silu_reference,
    group_norm_silu_with_statistics,
    group_norm_statistics,
)
from brainkernels.ops.group_norm_silu_conv import group_norm_silu_conv, group_norm_silu_conv_reference

__all__ = [
    "MAX_PATCH_SIZE",
    "coordinate_mlp",
    "coordinate_mlp_reference",
    "extract_patches3d",
    "extract_patches3d_backward_reference",
    "extract_patches3d_reference",
    "grid_coordinates",
    "group_norm_silu",
    "group_norm_silu_conv",
    "group_norm_silu_conv_reference",
    "group_norm_silu_reference",
    "group_norm_silu_with_statistics",
    "group_norm_statistics",
]
