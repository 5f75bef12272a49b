"""Drop-in torch.nn modules built on brainkernels ops."""

from brainkernels.nn.convert import FusedDiffusionUNetResnetBlock, convert_module
from brainkernels.nn.coordinate_mlp import CoordinateMLP, CoordinateMLPLayer, ReferenceCoordinateMLP
from brainkernels.nn.group_norm import GroupNormSiLU
from brainkernels.nn.norm_act_conv import GroupNormSiLUConv
from brainkernels.nn.patches import PatchExtractor3d

__all__ = [
    "CoordinateMLP",
    "CoordinateMLPLayer",
    "FusedDiffusionUNetResnetBlock",
    "GroupNormSiLU",
    "GroupNormSiLUConv",
    "PatchExtractor3d",
    "ReferenceCoordinateMLP",
    "convert_module",
]
