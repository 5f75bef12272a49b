"""Module form of brainkernels.ops.group_norm_silu, and a converter for existing models."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from brainkernels.ops.group_norm_silu import ACTIVATIONS, group_norm_silu


class GroupNormSiLU(nn.Module):
    """``nn.GroupNorm`` followed by SiLU, fused, with PatchDDM's optional extra inputs.

    ``forward(h, skip=None, emb=None, scale=None, shift=None)`` returns
    ``act(GroupNorm((h + skip) / 2 + emb) * (1 + scale) + shift)`` (see
    :func:`brainkernels.ops.group_norm_silu`); with only ``h`` it equals
    ``nn.SiLU()(nn.GroupNorm(...)(h))`` but keeps only ``h`` and two tiny statistics for backward.

    Parameters and state_dict keys are those of ``nn.GroupNorm`` (``weight``, ``bias`` when
    ``affine``), so checkpoints load both ways. Parameters of another dtype than ``h`` (float32
    weights with bfloat16 activations) are cast to ``h``'s dtype for the call.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 activation: str = "silu", device=None, dtype=None) -> None:
        super().__init__()
        if num_groups < 1 or num_channels % num_groups != 0:
            raise ValueError(
                f"num_groups must be a positive divisor of num_channels ({num_channels}); got {num_groups}"
            )
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}; got {activation!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive; got {eps!r}")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.activation = activation
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    @classmethod
    def from_group_norm(cls, norm: nn.GroupNorm, activation: str = "silu") -> GroupNormSiLU:
        """A GroupNormSiLU that shares ``norm``'s parameter objects (optimisers keep working)."""
        fused = cls(norm.num_groups, norm.num_channels, norm.eps, affine=False, activation=activation)
        fused.affine = norm.affine
        fused.weight, fused.bias = norm.weight, norm.bias
        return fused

    def forward(self, h: Tensor, skip: Tensor | None = None, emb: Tensor | None = None,
                scale: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
        weight, bias = self.weight, self.bias
        if weight is not None and weight.dtype != h.dtype:
            weight = weight.to(h.dtype)
        if bias is not None and bias.dtype != h.dtype:
            bias = bias.to(h.dtype)
        return group_norm_silu(h, self.num_groups, weight, bias, self.eps, skip=skip, emb=emb, scale=scale,
                               shift=shift, activation=self.activation)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"activation={self.activation!r}")
