"""Drop-in torch.nn modules built on brainkernels ops."""

from brainkernels.nn.group_norm import GroupNormSiLU, convert_module
from brainkernels.nn.patches import PatchExtractor3d

__all__ = ["GroupNormSiLU", "PatchExtractor3d", "convert_module"]
