"""GroupNorm + SiLU + convolution as a module over the ``group_norm_silu_conv`` op.

:class:`GroupNormSiLUConv` holds the parameters (an ``nn.GroupNorm`` and an ``nn.Conv{1,2,3}d``)
and :func:`group_norm_silu_conv` applies existing ``norm`` and ``conv`` modules: in training the
op (:mod:`brainkernels.ops.group_norm_silu_conv`), which stores only its inputs for backward.

Inference (no grad, 3D) of a large volume does not materialise the activation: the group
statistics are gathered first, then the fused kernel normalises one slab of planes (at most
``SLAB_ELEMENTS`` activation elements, plus a halo) at a time, which is convolved into the output. A
U-Net's sampling peak then holds the skips, the block's input and its output, not an extra
activation. Volumes whose whole activation fits in one slab take the op (faster).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from brainkernels.ops.convolution import conv3d
from brainkernels.ops.group_norm_silu import group_norm_silu_with_statistics, group_norm_statistics
from brainkernels.ops.group_norm_silu_conv import check_arguments, convolution_dtype, group_norm_silu_conv_reference
from brainkernels.ops.group_norm_silu_conv import group_norm_silu_conv as group_norm_silu_conv_op

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SLAB_ELEMENTS = 1 << 24  # activation elements per inference slab (32 MiB in bfloat16)


def _slab_inference(x, skip, emb, norm: nn.GroupNorm, conv: nn.Conv3d, planes: int) -> Tensor:
    """The volume's group statistics in one pass, then each slab normalised by the fused kernel
    straight into a buffer that holds its halo planes, and convolved."""
    check_arguments(x, norm.num_groups, conv.weight, conv.bias, norm.weight, norm.bias, norm.eps, skip, emb)
    norm_weight, norm_bias, emb = (None if t is None else t.to(x.dtype) for t in (norm.weight, norm.bias, emb))
    mean, rstd = group_norm_statistics(x, norm.num_groups, norm.eps, skip=skip, emb=emb)
    n, channels, depth = x.shape[:3]
    dtype, halo = convolution_dtype(x), conv.padding[0]
    weight, bias = conv.weight.to(dtype), None if conv.bias is None else conv.bias.to(dtype)
    out = x.new_empty((n, conv.out_channels, *x.shape[2:]), dtype=dtype)
    # One buffer for every slab's activation with its halo planes ("same" padding along the slab
    # axis: zeros at the volume's ends, neighbouring planes inside), written in place; under
    # autocast the kernel writes x's dtype into a second buffer, copied over.
    padded = x.new_empty((n, channels, min(planes, depth) + 2 * halo, *x.shape[3:]), dtype=dtype)
    staging = padded if dtype == x.dtype else torch.empty_like(padded, dtype=x.dtype)
    for start in range(0, depth, planes):
        stop = min(start + planes, depth)
        low, high = max(start - halo, 0), min(stop + halo, depth)
        before, after = halo - (start - low), halo - (high - stop)
        slab = padded[:, :, :before + high - low + after]
        slab[:, :, :before].zero_()
        slab[:, :, before + high - low:].zero_()
        activation = staging[:, :, before:before + high - low]
        group_norm_silu_with_statistics(x[:, :, low:high], mean, rstd, norm_weight, norm_bias, emb=emb, out=activation,
                                        skip=None if skip is None else skip[:, :, low:high])
        if staging is not padded:
            slab[:, :, before:before + high - low].copy_(activation)
        out[:, :, start:stop] = conv3d(slab, weight, bias, padding=(0, halo, halo))
    return out


def is_same_size_convolution(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain stride-1 convolution with "same" zero padding (what the fused
    path implements)."""
    return (isinstance(conv, _CONVOLUTIONS) and conv.groups == 1
            and conv.padding_mode == "zeros" and all(s == 1 for s in conv.stride)
            and all(d == 1 for d in conv.dilation) and len(set(conv.kernel_size)) == 1
            and conv.kernel_size[0] % 2 == 1 and all(p == conv.kernel_size[0] // 2 for p in conv.padding))


def group_norm_silu_conv(x: Tensor, norm: nn.GroupNorm, conv: nn.Module, *, skip: Tensor | None = None,
                         emb: Tensor | None = None) -> Tensor:
    """``conv(silu(norm((x + skip) / 2 + emb)))`` with the parameters of existing ``norm`` and
    ``conv`` modules (see :func:`is_same_size_convolution`), storing nothing but the inputs for
    backward, and in 3D inference never holding the whole activation."""
    if not is_same_size_convolution(conv):
        raise ValueError(f"conv must be a stride-1, undilated, ungrouped convolution with an odd cubic kernel and "
                         f"'same' zero padding (the fused path keeps the input's size); got {conv}")
    tensors = (x, skip, emb, norm.weight, norm.bias, conv.weight, conv.bias)
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if not training and x.dim() == 5:
        planes = max(1, SLAB_ELEMENTS // (x[:, :, 0].numel() or 1))
        if planes < x.shape[2]:
            return _slab_inference(x, skip, emb, norm, conv, planes)
    return group_norm_silu_conv_op(x, norm.num_groups, conv.weight, conv.bias, norm_weight=norm.weight,
                                   norm_bias=norm.bias, eps=norm.eps, skip=skip, emb=emb)


class GroupNormSiLUConv(nn.Module):
    """``conv(silu(group_norm((x + skip) / 2 + emb)))`` (``skip``, ``emb`` optional) with stride 1
    and "same" padding, for 1D, 2D and 3D inputs.

    Parameters are an ``nn.GroupNorm`` (``norm``) and an ``nn.Conv{dims}d`` (``conv``), so
    checkpoints of the plain composition load unchanged. With ``fused=False`` the module runs
    that plain composition (the reference the tests and benchmarks compare with).
    """

    def __init__(self, num_groups: int, in_channels: int, out_channels: int, kernel_size: int = 3, *,
                 dims: int = 3, eps: float = 1e-5, fused: bool = True) -> None:
        super().__init__()
        if dims not in (1, 2, 3):
            raise ValueError(f"dims must be 1, 2 or 3; got {dims!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int (same padding); got {kernel_size!r}")
        self.norm = nn.GroupNorm(num_groups, in_channels, eps=eps)
        self.conv = _CONVOLUTIONS[dims - 1](in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.fused = fused

    def forward(self, x: Tensor, skip: Tensor | None = None, emb: Tensor | None = None) -> Tensor:
        if not self.fused:
            norm, conv = self.norm, self.conv
            return group_norm_silu_conv_reference(x, norm.num_groups, conv.weight, conv.bias, norm_weight=norm.weight,
                                                  norm_bias=norm.bias, eps=norm.eps, skip=skip, emb=emb)
        return group_norm_silu_conv(x, self.norm, self.conv, skip=skip, emb=emb)

    def extra_repr(self) -> str:
        return f"fused={self.fused}"
