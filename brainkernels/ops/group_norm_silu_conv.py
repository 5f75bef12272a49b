"""GroupNorm + SiLU + "same" convolution, the block of PatchDDM's U-Net, storing no activation.

    y = conv(silu(GroupNorm((x + skip) / 2 + emb)))     (skip, emb optional)

``conv`` has stride 1, no dilation, no groups and an odd cubic kernel with "same" zero padding,
so y has x's spatial size; x is (N, C, *spatial) with 1, 2 or 3 spatial dimensions.

Memory: a plain ``conv(silu(group_norm(x)))`` keeps three full-size tensors for backward (the
normalised tensor, the activation and, for the convolution's weight gradient, the activation
again). This op saves only its inputs, which the caller holds anyway (the previous layer's
output, a U-Net skip, parameters). Backward recomputes the cheap elementwise part,
``a = silu(group_norm(...))``, to get the convolution's weight gradient, and frees ``a`` before
the normalisation's backward, which needs only the group statistics. The convolution is never
recomputed: this is not gradient checkpointing.

Dtypes: the normalisation runs in x's dtype (``group_norm_silu``: statistics in float32, float64
for float64) with autocast off; the convolution runs in ``dtype``: autocast's when autocast is on
for x's device, else x's. The parameters and ``emb`` may have other dtypes: they are cast for the
call only, and their gradients come back in their own dtypes.

Backends: the normalisation and its backward are ``group_norm_silu``'s (cpu, triton, reference);
the convolution and its backward are PyTorch's.
"""

from __future__ import annotations

import contextlib
import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from brainkernels.memory import StorageTracker
from brainkernels.ops.convolution import conv3d
from brainkernels.ops.group_norm_silu import DTYPES, group_norm_silu_reference

_REFERENCE_CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONVOLUTIONS = _REFERENCE_CONVOLUTIONS | {3: conv3d}


def convolution_dtype(x: Tensor) -> torch.dtype:
    """The dtype the convolution runs in: autocast's, when autocast is on for ``x``'s device."""
    if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return t if t is None or t.dtype == dtype else t.to(dtype)


def group_norm_silu_conv_reference(
    x: Tensor,
    num_groups: int,
    conv_weight: Tensor,
    conv_bias: Tensor | None = None,
    *,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
    eps: float = 1e-5,
    skip: Tensor | None = None,
    emb: Tensor | None = None,
) -> Tensor:
    """Plain-PyTorch composition (F.group_norm, F.silu, F.conv{1,2,3}d), every tensor in one
    dtype: the test oracle. Autograd stores every intermediate."""
    activation = group_norm_silu_reference(x, num_groups, norm_weight, norm_bias, eps, skip=skip, emb=emb)
    return _REFERENCE_CONVOLUTIONS[x.dim() - 2](activation, conv_weight, conv_bias, padding=conv_weight.shape[-1] // 2)


def _check_dtype_and_device(name: str, t: Tensor, x: Tensor) -> None:
    if t.dtype not in DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64; got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}; put them on one device")


def _check_tensor(name: str, t: object, x: Tensor, shape: tuple[int, ...], shape_text: str) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None; got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape_text} = {shape}; got {tuple(t.shape)}")
    _check_dtype_and_device(name, t, x)


def _check_conv_weight(conv_weight: object, x: Tensor) -> None:
    if not isinstance(conv_weight, Tensor):
        raise TypeError(f"conv_weight must be a torch.Tensor; got {type(conv_weight).__name__}")
    dims = x.dim() - 2
    kernel = conv_weight.shape[2:]
    if (conv_weight.dim() != x.dim() or conv_weight.shape[1] != x.shape[1] or len(set(kernel)) != 1
            or kernel[0] % 2 == 0):
        raise ValueError(f"conv_weight must have shape (out_channels, {x.shape[1]}{', k' * dims}) with one odd "
                         f"kernel size k (a 'same' convolution of x's {x.shape[1]} channels); "
                         f"got {tuple(conv_weight.shape)}")
    _check_dtype_and_device("conv_weight", conv_weight, x)


def check_arguments(x, num_groups, conv_weight, conv_bias, norm_weight, norm_bias, eps, skip, emb) -> None:
    """The checks of :func:`group_norm_silu_conv`: an error that names the bad argument."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() not in (3, 4, 5):
        raise ValueError(f"x must have shape (N, C, *spatial) with 1, 2 or 3 spatial dimensions; got {tuple(x.shape)}")
    if min(x.shape[2:]) < 1:
        raise ValueError(f"x's spatial sizes must be at least 1 (the convolution refuses empty ones); "
                         f"got {tuple(x.shape)}")
    if x.dtype not in DTYPES:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64; got {x.dtype}")
    channels = x.shape[1]
    if channels < 1:
        raise ValueError(f"x must have at least one channel; got shape {tuple(x.shape)}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"num_groups must be an int; got {type(num_groups).__name__}")
    if num_groups < 1 or channels % num_groups != 0:
        raise ValueError(f"num_groups must be a positive divisor of the {channels} channels of x; got {num_groups}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (0 < eps < math.inf):
        raise ValueError(f"eps must be a positive finite number; got {eps!r}")
    _check_conv_weight(conv_weight, x)
    _check_tensor("conv_bias", conv_bias, x, (conv_weight.shape[0],), "(out_channels,)")
    _check_tensor("norm_weight", norm_weight, x, (channels,), "(C,)")
    _check_tensor("norm_bias", norm_bias, x, (channels,), "(C,)")
    _check_tensor("skip", skip, x, tuple(x.shape), "x's shape")
    if skip is not None and skip.dtype != x.dtype:
        raise TypeError(f"skip has dtype {skip.dtype} but x has {x.dtype}; give skip x's dtype")
    _check_tensor("emb", emb, x, (x.shape[0], channels), "(N, C)")


def group_norm_silu_conv(
    x: Tensor,
    num_groups: int,
    conv_weight: Tensor,
    conv_bias: Tensor | None = None,
    *,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
    eps: float = 1e-5,
    skip: Tensor | None = None,
    emb: Tensor | None = None,
) -> Tensor:
    """``conv(silu(GroupNorm((x + skip) / 2 + emb)))`` saving only its inputs; see the module doc.

    Args:
        x: (N, C, *spatial) with 1, 2 or 3 spatial dimensions; float16/bfloat16/float32/float64.
        num_groups: GroupNorm's number of groups, a divisor of C.
        conv_weight: (out_channels, C, k, ..., k), k odd: a stride-1 "same" convolution.
        conv_bias: (out_channels,) or None.
        norm_weight, norm_bias: GroupNorm's per-channel affine, (C,) or None (ones / zeros).
        eps: added to the variance, > 0.
        skip: tensor of x's shape and dtype averaged with x, or None.
        emb: (N, C) added before the normalisation, or None.

    Every tensor must be on x's device. Returns (N, out_channels, *spatial) in autocast's dtype
    when autocast is on for x's device, else in x's dtype; differentiable in every tensor.
    """
    check_arguments(x, num_groups, conv_weight, conv_bias, norm_weight, norm_bias, eps, skip, emb)
    return torch.ops.brainkernels.group_norm_silu_conv(x, skip, emb, norm_weight, norm_bias, conv_weight, conv_bias,
                                                        num_groups, float(eps), convolution_dtype(x))


def _without_autocast(x: Tensor):
    if x.device.type in ("cpu", "cuda"):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _forward(x, skip, emb, norm_weight, norm_bias, conv_weight, conv_bias, num_groups, eps, dtype) -> Tensor:
    with _without_autocast(x):
        activation = torch.ops.brainkernels.group_norm_silu(
            x, skip, _cast(emb, x.dtype), None, None, _cast(norm_weight, x.dtype), _cast(norm_bias, x.dtype),
            num_groups, eps, "silu")[0]
        out = _CONVOLUTIONS[x.dim() - 2](activation.to(dtype), _cast(conv_weight, dtype), _cast(conv_bias, dtype),
                                         padding=conv_weight.shape[-1] // 2)
    # The fake promises a contiguous output (a channels-last weight would make the convolution's
    # channels-last).
    return out.contiguous()


@torch.library.custom_op("brainkernels::group_norm_silu_conv", mutates_args=())
def _group_norm_silu_conv(
    x: Tensor,
    skip: Tensor | None,
    emb: Tensor | None,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
    conv_weight: Tensor,
    conv_bias: Tensor | None,
    num_groups: int,
    eps: float,
    dtype: torch.dtype,
) -> Tensor:
    """Op form of :func:`group_norm_silu_conv` (arguments validated); the convolution runs in
    ``dtype``."""
    return _forward(x, skip, emb, norm_weight, norm_bias, conv_weight, conv_bias, num_groups, eps, dtype)


@_group_norm_silu_conv.register_fake
def _(x, skip, emb, norm_weight, norm_bias, conv_weight, conv_bias, num_groups, eps, dtype):
    return x.new_empty((x.shape[0], conv_weight.shape[0], *x.shape[2:]), dtype=dtype)


@register_flop_formula(torch.ops.brainkernels.group_norm_silu_conv)
def _(x_shape, skip, emb, norm_weight, norm_bias, conv_weight_shape, *args, out_shape=None, **kwargs) -> int:
    # FlopCounterMode sees a custom op as one opaque call and would count nothing: the forward's
    # convolution (its backward is aten.convolution_backward, counted as it is).
    return conv_flop_count(x_shape, conv_weight_shape, out_shape)


@torch.library.register_torch_dispatch("brainkernels::group_norm_silu_conv", StorageTracker)
def _(mode, func, types, args, kwargs):
    # The activation lives inside the op while it runs, as big as x: run the op's steps under the
    # tracker so that it counts them as it would a plain composition (and as the CUDA allocator
    # does), on CPU and on the meta device alike.
    with mode:
        return _forward(*args, **kwargs)


def _setup_context(ctx, inputs, output) -> None:
    x, skip, emb, norm_weight, norm_bias, conv_weight, conv_bias, num_groups, eps, dtype = inputs
    ctx.save_for_backward(x, skip, emb, norm_weight, norm_bias, conv_weight, conv_bias)
    ctx.num_groups, ctx.eps, ctx.dtype = num_groups, eps, dtype


def _backward(ctx, grad_out):
    x, skip, emb, norm_weight, norm_bias, conv_weight, conv_bias = ctx.saved_tensors
    needs, dtype = ctx.needs_input_grad, ctx.dtype
    norm_dtypes = [None if t is None else t.dtype for t in (emb, norm_weight, norm_bias)]
    emb, norm_weight, norm_bias = (_cast(t, x.dtype) for t in (emb, norm_weight, norm_bias))
    wanted = [t is not None and need for t, need in zip((x, skip, emb, norm_weight, norm_bias), needs[:5])]
    with torch.no_grad(), _without_autocast(x):
        activation, mean, rstd = torch.ops.brainkernels.group_norm_silu(
            x, skip, emb, None, None, norm_weight, norm_bias, ctx.num_groups, ctx.eps, "silu")
        dims = x.dim() - 2
        grad_activation, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_out.to(dtype), activation.to(dtype), conv_weight.to(dtype),
            None if conv_bias is None else [conv_bias.shape[0]], [1] * dims, [conv_weight.shape[-1] // 2] * dims,
            [1] * dims, False, [0] * dims, 1, [any(wanted), needs[5], conv_bias is not None and needs[6]])
        # The normalisation's backward needs the statistics, not the activation: free it first
        # (one full-size tensor less at this block's backward peak).
        del activation
        grads = [None] * 5
        if any(wanted):
            grad_input, grad_emb, _, _, grad_norm_weight, grad_norm_bias = \
                torch.ops.brainkernels.group_norm_silu_backward(
                    grad_activation.to(x.dtype), x, skip, emb, None, None, norm_weight, norm_bias, mean, rstd,
                    ctx.num_groups, ctx.eps, "silu", wanted[0] or wanted[1])
            del grad_activation
            # x and skip enter as (x + skip) / 2: the op's input gradient is the gradient of each.
            computed = (grad_input, grad_input, grad_emb, grad_norm_weight, grad_norm_bias)
            grads = [grad if want else None for grad, want in zip(computed, wanted)]
            grads[2:] = [None if g is None else g.to(d) for g, d in zip(grads[2:], norm_dtypes)]
    grad_weight = None if grad_weight is None else grad_weight.to(conv_weight.dtype)
    grad_bias = None if grad_bias is None else grad_bias.to(conv_bias.dtype)
    return (*grads, grad_weight, grad_bias, None, None, None)


_group_norm_silu_conv.register_autograd(_backward, setup_context=_setup_context)
