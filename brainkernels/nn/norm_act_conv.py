"""GroupNorm + SiLU + convolution as a module over the ``group_norm_silu_conv`` op.

:class:`GroupNormSiLUConv` holds the parameters (an ``nn.GroupNorm`` and an ``nn.Conv{1,2,3}d``)
and :func:`group_norm_silu_conv` applies existing ``norm`` and ``conv`` modules: in training the
op (:mod:`brainkernels.ops.group_norm_silu_conv`), which stores only its inputs for backward.

Inference (no grad, 3D) of a large volume does not materialise the activation: the group
statistics are gathered first, then the activation is made and convolved one slab of planes (at
most ``SLAB_ELEMENTS`` activation elements, plus a halo) at a time, written into the output. A
U-Net's sampling peak then holds the skips, the block's input and its output, not an extra
activation. Volumes whose whole activation fits in one slab take the op (faster).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainkernels.ops.convolution import conv3d
from brainkernels.ops.group_norm_silu_conv import convolution_dtype, group_norm_silu_conv_reference
from brainkernels.ops.group_norm_silu_conv import group_norm_silu_conv as group_norm_silu_conv_op

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SLAB_ELEMENTS = 1 << 24  # activation elements per inference slab (32 MiB in bfloat16)


def _statistics_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _slab_input(x: Tensor, skip: Tensor | None, start: int, stop: int) -> Tensor:
    """``(x + skip) / 2`` on planes ``start:stop`` of the first spatial axis, in float32 (float64
    for float64 inputs); a view of ``x`` where no skip or cast is needed."""
    y = x[:, :, start:stop].to(_statistics_dtype(x))
    return y if skip is None else torch.add(y, skip[:, :, start:stop]).mul_(0.5)


def _group_statistics(x: Tensor, skip, emb, num_groups: int, eps: float, planes: int) -> tuple[Tensor, Tensor]:
    """(N, G) mean and rstd of ``(x + skip) / 2 + emb``: each channel's moments slab by slab, read
    in place (Chan et al.'s pairwise combination, exact in float32 where sums of squares are not),
    then the group's from its channels'. ``emb`` shifts a channel's mean, not its spread."""
    count, mean, m2 = 0, None, None
    for start in range(0, x.shape[2], planes):
        y = _slab_input(x, skip, start, start + planes).flatten(2)  # a view: a channel's planes are contiguous
        slab_count = y.shape[2]
        var, slab_mean = torch.var_mean(y, dim=2, correction=0)
        if mean is None:
            count, mean, m2 = slab_count, slab_mean, var * slab_count
            continue
        delta = slab_mean - mean
        total = count + slab_count
        mean = mean + delta * slab_count / total
        m2 = m2 + var * slab_count + delta.square() * count * slab_count / total
        count = total
    if emb is not None:
        mean = mean + emb.to(mean.dtype)
    n, channels = mean.shape
    mean, m2 = mean.reshape(n, num_groups, -1), m2.reshape(n, num_groups, -1)
    group_mean = mean.mean(dim=2)
    group_m2 = m2.sum(dim=2) + count * (mean - group_mean[..., None]).square().sum(dim=2)
    return group_mean, torch.rsqrt(group_m2 / (count * (channels // num_groups)) + eps)


def _slab_inference(x, skip, emb, norm: nn.GroupNorm, conv: nn.Conv3d, planes: int) -> Tensor:
    mean, rstd = _group_statistics(x, skip, emb, norm.num_groups, norm.eps, planes)
    n, channels, depth = x.shape[:3]
    group_size = channels // norm.num_groups
    scale = rstd.repeat_interleave(group_size, dim=1)
    shift = -mean.repeat_interleave(group_size, dim=1) * scale
    if norm.weight is not None:
        weight = norm.weight.to(scale.dtype)
        scale, shift = scale * weight, shift * weight
    if norm.bias is not None:
        shift = shift + norm.bias.to(scale.dtype)
    if emb is not None:  # normalise (x + skip) / 2 + emb as (x + skip) / 2 with emb in the shift
        shift = shift + emb.to(scale.dtype) * scale
    scale, shift = scale.reshape(n, channels, 1, 1, 1), shift.reshape(n, channels, 1, 1, 1)
    dtype, halo = convolution_dtype(x), conv.padding[0]
    weight, bias = conv.weight.to(dtype), None if conv.bias is None else conv.bias.to(dtype)
    out = x.new_empty((n, conv.out_channels, *x.shape[2:]), dtype=dtype)
    # One buffer for every slab's activation with its halo planes ("same" padding along the slab
    # axis: zeros at the volume's ends, neighbouring planes inside), written in place.
    padded = x.new_empty((n, channels, min(planes, depth) + 2 * halo, *x.shape[3:]), dtype=dtype)
    for start in range(0, depth, planes):
        stop = min(start + planes, depth)
        low, high = max(start - halo, 0), min(stop + halo, depth)
        before, after = halo - (start - low), halo - (high - stop)
        slab = padded[:, :, :before + high - low + after]
        slab[:, :, :before].zero_()
        slab[:, :, before + high - low:].zero_()
        activation = slab[:, :, before:before + high - low]
        y = _slab_input(x, skip, low, high)
        if activation.dtype == scale.dtype:
            target = activation
        elif skip is not None or x.dtype != scale.dtype:  # y is a copy, not a view of x: normalise in place
            target = y
        else:
            target = None
        normalised = F.silu(torch.addcmul(shift, y, scale, out=target), inplace=True)
        if normalised is not activation:
            activation.copy_(normalised)
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
