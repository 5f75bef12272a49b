"""GroupNorm + SiLU + convolution as one module that stores no activation of its own.

In a plain ``conv(silu(group_norm(x)))`` autograd keeps three full-size tensors for backward:
the normalised tensor, the activation and (for the convolution's weight gradient) the activation
again. :class:`GroupNormSiLUConv` keeps only its input ``x`` (which the caller holds anyway: it is
the previous layer's output or a U-Net skip) and recomputes the cheap elementwise part,
``a = silu(group_norm(x))``, in backward to get the convolution's weight gradient. The
convolution itself is never recomputed: this is not gradient checkpointing.

With ``skip`` and ``emb`` the normalised tensor is ``(x + skip) / 2 + emb`` (PatchDDM's averaged
U-Net skip and timestep embedding), computed inside the fused GroupNorm op, so the average is
never stored either.

Inference (no grad, 3D) of a large volume does not materialise the activation: the group
statistics are gathered first, then the activation is made and convolved one slab of planes (at
most ``SLAB_ELEMENTS`` activation elements, plus a halo) at a time, written into the output. A
U-Net's sampling peak then holds the skips, the block's input and its output, not an extra
activation. Volumes whose whole activation fits in one slab take the one-shot path (faster).
"""

from __future__ import annotations

import contextlib

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainkernels.ops.group_norm_silu import group_norm_silu, group_norm_silu_reference

_CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
SLAB_ELEMENTS = 1 << 24  # activation elements per inference slab (32 MiB in bfloat16)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the convolution runs in: autocast's, when autocast is on for ``x``'s device."""
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _without_autocast(x: Tensor):
    if x.device.type in ("cpu", "cuda"):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return t if t is None or t.dtype == dtype else t.to(dtype)


class _NormActConv(torch.autograd.Function):
    """conv(silu(group_norm((x + skip) / 2 + emb))); saves the inputs only."""

    @staticmethod
    def forward(ctx, x, skip, emb, norm_weight, norm_bias, conv_weight, conv_bias, num_groups, eps, padding):
        ctx.settings = (num_groups, eps, padding, _compute_dtype(x))
        with torch.no_grad():
            out = _normalise_and_convolve(x, skip, emb, norm_weight, norm_bias, conv_weight, conv_bias, num_groups,
                                          eps, padding)
        ctx.save_for_backward(x, skip, emb, norm_weight, norm_bias, conv_weight, conv_bias)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, skip, emb, norm_weight, norm_bias, conv_weight, conv_bias = ctx.saved_tensors
        num_groups, eps, padding, dtype = ctx.settings
        norm_dtypes = [None if t is None else t.dtype for t in (emb, norm_weight, norm_bias)]
        emb, norm_weight, norm_bias = (_cast(t, x.dtype) for t in (emb, norm_weight, norm_bias))
        wanted = [t is not None and need for t, need in
                  zip((x, skip, emb, norm_weight, norm_bias), ctx.needs_input_grad[:5])]
        with torch.no_grad(), _without_autocast(x):
            activation, mean, rstd = torch.ops.brainkernels.group_norm_silu(
                x, skip, emb, None, None, norm_weight, norm_bias, num_groups, float(eps), "silu")
        dims = x.dim() - 2
        grad_activation, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_out.to(dtype), activation.to(dtype), conv_weight.to(dtype),
            None if conv_bias is None else [conv_bias.shape[0]], [1] * dims, [padding] * dims, [1] * dims, False,
            [0] * dims, 1, [any(wanted), ctx.needs_input_grad[5], conv_bias is not None and ctx.needs_input_grad[6]])
        # The normalisation's backward needs the statistics, not the activation: free it first
        # (one full-size tensor less at this block's backward peak).
        del activation
        grads = [None] * 5
        if any(wanted):
            grad_input, grad_emb, _, _, grad_norm_weight, grad_norm_bias = \
                torch.ops.brainkernels.group_norm_silu_backward(
                    grad_activation.to(x.dtype), x, skip, emb, None, None, norm_weight, norm_bias, mean, rstd,
                    num_groups, float(eps), "silu", wanted[0] or wanted[1])
            del grad_activation
            # x and skip enter as (x + skip) / 2: the op's input gradient is the gradient of each.
            computed = (grad_input, grad_input, grad_emb, grad_norm_weight, grad_norm_bias)
            grads = [grad if want else None for grad, want in zip(computed, wanted)]
            grads[2:] = [None if g is None else g.to(d) for g, d in zip(grads[2:], norm_dtypes)]
        grad_weight = None if grad_weight is None else grad_weight.to(conv_weight.dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(conv_bias.dtype)
        return (*grads, grad_weight, grad_bias, None, None, None)


def _normalise(x, skip, emb, weight, bias, num_groups, eps) -> Tensor:
    weight, bias = _cast(weight, x.dtype), _cast(bias, x.dtype)
    return group_norm_silu(x, num_groups, weight, bias, eps, skip=skip, emb=_cast(emb, x.dtype))


def _convolve(activation: Tensor, weight: Tensor, bias: Optional[Tensor], padding: int) -> Tensor:
    dtype = activation.dtype
    return _CONVOLUTIONS[activation.dim() - 2](activation, _cast(weight, dtype), _cast(bias, dtype), padding=padding)


def _normalise_and_convolve(x, skip, emb, norm_weight, norm_bias, conv_weight, conv_bias, num_groups, eps,
                            padding) -> Tensor:
    """The whole activation, then the convolution in the compute dtype (autocast's, if on)."""
    dtype = _compute_dtype(x)
    with _without_autocast(x):
        activation = _normalise(x, skip, emb, norm_weight, norm_bias, num_groups, eps)
        return _convolve(activation.to(dtype), conv_weight, conv_bias, padding)


def _statistics_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _slab_input(x: Tensor, skip: Optional[Tensor], emb: Optional[Tensor], start: int, stop: int) -> Tensor:
    """``(x + skip) / 2 + emb`` on planes ``start:stop`` of the first spatial axis, in float32
    (float64 for float64 inputs)."""
    dtype = _statistics_dtype(x)
    y = x[:, :, start:stop].to(dtype, copy=True)
    if skip is not None:
        y = y.add_(skip[:, :, start:stop].to(dtype)).mul_(0.5)
    if emb is not None:
        y = y.add_(emb.to(dtype).reshape(*emb.shape, 1, 1, 1))
    return y


def _group_statistics(x: Tensor, skip, emb, num_groups: int, eps: float, planes: int) -> tuple[Tensor, Tensor]:
    """(N, G) mean and rstd of ``(x + skip) / 2 + emb``, combined over slabs (Chan et al.)."""
    count, mean, m2 = 0, None, None
    for start in range(0, x.shape[2], planes):
        y = _slab_input(x, skip, emb, start, start + planes).reshape(x.shape[0], num_groups, -1)
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
    return mean, torch.rsqrt(m2 / count + eps)


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
    scale, shift = scale.reshape(n, channels, 1, 1, 1), shift.reshape(n, channels, 1, 1, 1)
    dtype, halo = _compute_dtype(x), conv.padding[0]
    out = x.new_empty((n, conv.out_channels, *x.shape[2:]), dtype=dtype)
    for start in range(0, depth, planes):
        stop = min(start + planes, depth)
        low, high = max(start - halo, 0), min(stop + halo, depth)
        activation = F.silu(_slab_input(x, skip, emb, low, high).mul_(scale).add_(shift)).to(dtype)
        # zero "same" padding of the whole volume along the slab axis, the halo elsewhere
        activation = F.pad(activation, (0, 0, 0, 0, halo - (start - low), halo - (high - stop)))
        out[:, :, start:stop] = F.conv3d(activation, _cast(conv.weight, dtype), _cast(conv.bias, dtype),
                                         padding=(0, halo, halo))
    return out


def is_same_size_convolution(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain stride-1 convolution with "same" zero padding (what the fused
    path implements)."""
    return (isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and conv.groups == 1
            and conv.padding_mode == "zeros" and all(s == 1 for s in conv.stride)
            and all(d == 1 for d in conv.dilation) and len(set(conv.kernel_size)) == 1
            and conv.kernel_size[0] % 2 == 1 and all(p == conv.kernel_size[0] // 2 for p in conv.padding))


def group_norm_silu_conv(x: Tensor, norm: nn.GroupNorm, conv: nn.Module, *, skip: Optional[Tensor] = None,
                         emb: Optional[Tensor] = None) -> Tensor:
    """``conv(silu(norm((x + skip) / 2 + emb)))`` with the parameters of existing ``norm`` and
    ``conv`` modules (see :func:`is_same_size_convolution`), storing nothing but the inputs for
    backward, and in 3D inference never holding the whole activation."""
    if not is_same_size_convolution(conv):
        raise ValueError(f"conv must be a stride-1, undilated, ungrouped convolution with an odd cubic kernel and "
                         f"'same' zero padding (the fused path keeps the input's size); got {conv}")
    tensors = (x, skip, emb, norm.weight, norm.bias, conv.weight, conv.bias)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)):
        planes = max(1, SLAB_ELEMENTS // (x[:, :, 0].numel() or 1))
        if x.dim() == 5 and planes < x.shape[2]:
            return _slab_inference(x, skip, emb, norm, conv, planes)
        return _normalise_and_convolve(x, skip, emb, norm.weight, norm.bias, conv.weight, conv.bias, norm.num_groups,
                                       norm.eps, conv.padding[0])
    return _NormActConv.apply(x, skip, emb, norm.weight, norm.bias, conv.weight, conv.bias, norm.num_groups, norm.eps,
                              conv.padding[0])


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
        if dims not in _CONVOLUTIONS:
            raise ValueError(f"dims must be 1, 2 or 3; got {dims!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int (same padding); got {kernel_size!r}")
        self.norm = nn.GroupNorm(num_groups, in_channels, eps=eps)
        self.conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](in_channels, out_channels, kernel_size,
                                                                padding=kernel_size // 2)
        self.fused = fused

    def forward(self, x: Tensor, skip: Optional[Tensor] = None, emb: Optional[Tensor] = None) -> Tensor:
        if not self.fused:
            norm = self.norm
            return self.conv(group_norm_silu_reference(x, norm.num_groups, norm.weight, norm.bias, norm.eps,
                                                       skip=skip, emb=emb))
        return group_norm_silu_conv(x, self.norm, self.conv, skip=skip, emb=emb)

    def extra_repr(self) -> str:
        return f"fused={self.fused}"
