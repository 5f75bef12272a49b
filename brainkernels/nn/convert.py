"""``convert_module``: fuse the GroupNorm + SiLU (+ convolution) patterns of an existing model in
place, keeping its parameters, state_dict keys and outputs (to float rounding)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from brainkernels.nn.group_norm import GroupNormSiLU
from brainkernels.nn.norm_act_conv import GroupNormSiLUConv, group_norm_silu_conv, is_same_size_convolution

_MONAI_RESNET_BLOCK = "DiffusionUNetResnetBlock"


class FusedDiffusionUNetResnetBlock(nn.Module):
    """MONAI's ``DiffusionUNetResnetBlock`` (without up/downsampling) with both of its
    norm -> SiLU -> conv chains fused and the timestep embedding folded into the second
    normalisation. It holds the original block's submodules under their names, so state_dict
    keys do not change."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        for name in ("norm1", "conv1", "time_emb_proj", "norm2", "conv2", "skip_connection"):
            setattr(self, name, getattr(block, name))
        self.nonlinearity = block.nonlinearity

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = group_norm_silu_conv(x, self.norm1, self.conv1.conv)
        h = group_norm_silu_conv(h, self.norm2, self.conv2.conv, emb=self.time_emb_proj(F.silu(emb)))
        return self.skip_connection(x) + h


def _convertible_monai_block(module: nn.Module) -> bool:
    if type(module).__name__ != _MONAI_RESNET_BLOCK or module.upsample is not None or module.downsample is not None:
        return False
    return (type(module.nonlinearity) is nn.SiLU and type(module.norm1) is nn.GroupNorm
            and type(module.norm2) is nn.GroupNorm and all(is_same_size_convolution(getattr(module, name).conv)
                                                           for name in ("conv1", "conv2")))


def convert_module(model: nn.Module) -> nn.Module:
    """Fuse the GroupNorm + SiLU patterns of ``model`` in place, and return ``model``.

    Converted:

    * inside every ``nn.Sequential`` (at any depth, ``model`` itself included), a child of type
      exactly ``nn.GroupNorm`` immediately followed by one of type exactly ``nn.SiLU``: the
      GroupNorm becomes a :class:`GroupNormSiLU` sharing its parameters, the SiLU ``nn.Identity``;
    * :class:`GroupNormSiLUConv` modules built with ``fused=False`` (brainkernels' PatchDDM U-Net
      in its plain-PyTorch form) are switched to the fused path;
    * MONAI's ``DiffusionModelUNet`` ResNet blocks without up/downsampling (GroupNorm, SiLU and
      stride-1 "same" convolutions) become :class:`FusedDiffusionUNetResnetBlock`.

    Not converted: subclasses of ``nn.GroupNorm``/``nn.SiLU``; pairs in other containers
    (``nn.ModuleList``, ``nn.ModuleDict``); other modules that call a GroupNorm and then a SiLU in
    their own ``forward``, whose call order a module walker cannot see.
    """
    for module in list(model.modules()):
        if isinstance(module, GroupNormSiLUConv):
            module.fused = True
        for name, child in list(module.named_children()):
            if _convertible_monai_block(child):
                setattr(module, name, FusedDiffusionUNetResnetBlock(child))
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            norm, act = module._modules[first], module._modules[second]
            if type(norm) is nn.GroupNorm and type(act) is nn.SiLU:
                module._modules[first] = GroupNormSiLU.from_group_norm(norm)
                module._modules[second] = nn.Identity()
    return model
