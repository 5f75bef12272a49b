"""Fused GroupNorm + FiLM + SiLU block of PatchDDM's diffusion U-Net, lean on memory for training.

    x = (h + skip) / 2 + emb        (skip: the U-Net's averaged skip connection, optional;
                                     emb: per-sample, per-channel timestep embedding, optional)
    y = act(GroupNorm(x) * (1 + scale) + shift)

``GroupNorm`` has ``num_groups`` groups and an optional per-channel affine ``weight``/``bias``;
``scale``/``shift`` are optional per-sample, per-channel (FiLM); ``act`` is SiLU or the identity.
Shapes: h and skip (N, C, *) (any number of spatial dimensions, also none); emb, scale and shift
(N, C); weight and bias (C,). Statistics and all arithmetic are in float32 (float64 for float64
tensors) whatever the tensors' dtype.

Memory: for backward the op saves only its inputs as given plus the per-(sample, group) mean and
rstd (float32; float64 for float64 inputs); x, the normalised tensor and the pre-activation are
never stored but recomputed in backward. With no input requiring grad nothing is saved.
The gradients of h and skip are equal, so backward returns one tensor for both.

Backends: ``cpu`` (C++/OpenMP) and ``triton`` (which runs on CUDA tensors, there is no CUDA C++
kernel) share one structure: element passes over the rows (sample, channel) of (N, C, S) views,
and tiny per-(sample, channel) coefficient arithmetic with torch in float64 between them. Both
read float16/bfloat16 tensors in place, converting per element, so no 16-bit tensor is ever
copied to float32 as a whole. ``reference`` is the plain-PyTorch composition.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from brainkernels import _extension, backends

ACTIVATIONS = ("silu", "none")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Voxels per CPU task along a row: a fixed number, so results do not depend on the thread count.
CPU_CHUNK = 16384


def _per_channel(t: Tensor, dim: int) -> Tensor:
    """(N, C) or (C,) as a tensor that broadcasts against (N, C, *spatial) with ``dim`` dimensions."""
    return t.reshape(*t.shape, *([1] * (dim - 2)))


def group_norm_silu_reference(
    h: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    skip: Tensor | None = None,
    emb: Tensor | None = None,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    activation: str = "silu",
) -> Tensor:
    """Plain-PyTorch composition (F.group_norm, F.silu): the test oracle and the fallback."""
    x = h if skip is None else (h + skip) / 2
    if emb is not None:
        x = x + _per_channel(emb, h.dim())
    y = F.group_norm(x, num_groups, weight, bias, eps)
    if scale is not None:
        y = y * (1 + _per_channel(scale, h.dim()))
    if shift is not None:
        y = y + _per_channel(shift, h.dim())
    return F.silu(y) if activation == "silu" else y


def _check_tensor(name: str, t: object, h: Tensor, shape: tuple[int, ...], shape_text: str) -> None:
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None; got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape_text} = {shape}; got {tuple(t.shape)}")
    if t.dtype != h.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but h has {h.dtype}; give every tensor h's dtype")
    if t.device != h.device:
        raise ValueError(f"{name} is on {t.device} but h is on {h.device}; put them on one device")


def _check_arguments(h, num_groups, weight, bias, eps, skip, emb, scale, shift, activation) -> None:
    if not isinstance(h, Tensor):
        raise TypeError(f"h must be a torch.Tensor; got {type(h).__name__}")
    if h.dim() < 2:
        raise ValueError(f"h must have shape (N, C, *spatial); got {h.dim()} dimension(s) {tuple(h.shape)}")
    if h.dtype not in DTYPES:
        raise TypeError(f"h must be float16, bfloat16, float32 or float64; got {h.dtype}")
    channels = h.shape[1]
    if channels < 1:
        raise ValueError(f"h must have at least one channel; got shape {tuple(h.shape)}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"num_groups must be an int; got {type(num_groups).__name__}")
    if num_groups < 1 or channels % num_groups != 0:
        raise ValueError(f"num_groups must be a positive divisor of the {channels} channels of h; got {num_groups}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (0 < eps < math.inf):
        raise ValueError(f"eps must be a positive finite number; got {eps!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}; got {activation!r}")
    per_sample = (h.shape[0], channels)
    _check_tensor("skip", skip, h, tuple(h.shape), "h's shape")
    _check_tensor("emb", emb, h, per_sample, "(N, C)")
    _check_tensor("scale", scale, h, per_sample, "(N, C)")
    _check_tensor("shift", shift, h, per_sample, "(N, C)")
    _check_tensor("weight", weight, h, (channels,), "(C,)")
    _check_tensor("bias", bias, h, (channels,), "(C,)")


def group_norm_silu(
    h: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    skip: Tensor | None = None,
    emb: Tensor | None = None,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    activation: str = "silu",
) -> Tensor:
    """``act(GroupNorm((h + skip) / 2 + emb) * (1 + scale) + shift)``, fused; see the module doc.

    Args:
        h: (N, C, *spatial) float16/bfloat16/float32/float64 tensor; any strides.
        num_groups: number of groups, a divisor of C.
        weight, bias: GroupNorm's per-channel affine, (C,) or None (ones / zeros).
        eps: added to the variance, > 0.
        skip: tensor of h's shape averaged with h, or None.
        emb: (N, C) added to x before the normalisation, or None.
        scale, shift: (N, C) FiLM after the normalisation, or None (identity).
        activation: "silu" or "none".

    Every tensor must have h's dtype and device. Returns a contiguous tensor of h's shape and
    dtype, differentiable in every tensor argument.
    """
    _check_arguments(h, num_groups, weight, bias, eps, skip, emb, scale, shift, activation)
    out, _, _ = torch.ops.brainkernels.group_norm_silu(
        h, skip, emb, scale, shift, weight, bias, num_groups, float(eps), activation
    )
    return out


def _check_inference(name: str, *tensors: Tensor | None) -> None:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(f"{name} is for inference and has no gradient; call it under torch.no_grad() or use "
                           f"group_norm_silu, which is differentiable")


def group_norm_statistics(
    h: Tensor,
    num_groups: int,
    eps: float = 1e-5,
    *,
    skip: Tensor | None = None,
    emb: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-(sample, group) mean and ``1 / sqrt(var + eps)`` of ``x = (h + skip) / 2 + emb``: the
    statistics :func:`group_norm_silu` normalises with, from one pass that reads h and skip in
    place (no copy of x). Inference only (no gradient).

    Returns two (N, num_groups) tensors, float32 (float64 for float64 h). Arguments as for
    :func:`group_norm_silu`.
    """
    _check_arguments(h, num_groups, None, None, eps, skip, emb, None, None, "silu")
    _check_inference("group_norm_statistics", h, skip, emb)
    return torch.ops.brainkernels.group_norm_statistics(h, skip, emb, num_groups, float(eps))


def _check_statistics(h: Tensor, mean: object, rstd: object) -> None:
    for name, t in (("mean", mean), ("rstd", rstd)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        groups = t.shape[1] if t.dim() == 2 else 0
        if t.dim() != 2 or t.shape[0] != h.shape[0] or groups < 1 or h.shape[1] % groups != 0:
            raise ValueError(f"{name} must have shape (N, G) with N = {h.shape[0]} and G a divisor of the "
                             f"{h.shape[1]} channels of h; got {tuple(t.shape)}")
        if t.dtype != _stat_dtype(h.dtype):
            raise TypeError(f"{name} must be {_stat_dtype(h.dtype)} for {h.dtype} h (as group_norm_statistics "
                            f"returns it); got {t.dtype}")
        if t.device != h.device:
            raise ValueError(f"{name} is on {t.device} but h is on {h.device}; put them on one device")
    if mean.shape != rstd.shape:
        raise ValueError(f"mean and rstd must have one shape; got {tuple(mean.shape)} and {tuple(rstd.shape)}")


def _check_out(h: Tensor, out: object) -> None:
    if not isinstance(out, Tensor):
        raise TypeError(f"out must be a torch.Tensor or None; got {type(out).__name__}")
    if out.shape != h.shape or out.dtype != h.dtype or out.device != h.device:
        raise ValueError(f"out must have h's shape, dtype and device ({tuple(h.shape)}, {h.dtype}, {h.device}); "
                         f"got {tuple(out.shape)}, {out.dtype}, {out.device}")
    try:
        rows = out.view(out.shape[0], out.shape[1], -1) if out.numel() else None
    except RuntimeError:
        rows = None
    if out.numel() and (rows is None or (rows.shape[2] > 1 and rows.stride(2) != 1)):
        raise ValueError(f"out's spatial dimensions must be contiguous for each (sample, channel), as in a "
                         f"contiguous tensor or a slice of one along the first spatial axis; got strides "
                         f"{out.stride()}")
    if any(size > 1 and stride == 0 for size, stride in zip(out.shape[:2], out.stride()[:2])):
        raise ValueError(f"out must not be expanded along N or C (several rows would be written to one place); "
                         f"got strides {out.stride()}")


def group_norm_silu_with_statistics(
    h: Tensor,
    mean: Tensor,
    rstd: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    skip: Tensor | None = None,
    emb: Tensor | None = None,
    scale: Tensor | None = None,
    shift: Tensor | None = None,
    activation: str = "silu",
    out: Tensor | None = None,
) -> Tensor:
    """:func:`group_norm_silu` normalising with given group statistics, e.g. those of the whole
    volume (:func:`group_norm_statistics`) while h and skip are one slab of it. Inference only.

    Args:
        mean, rstd: (N, G) group statistics of ``(h + skip) / 2 + emb`` over the whole tensor,
            float32 (float64 for float64 h); G divides C and is the number of groups.
        out: where to write the result, or None for a new contiguous tensor: h's shape, dtype
            and device, each (sample, channel)'s voxels contiguous (a slice along the first
            spatial axis of a contiguous tensor qualifies).
        The others as for :func:`group_norm_silu`.

    Returns out (or the new tensor).
    """
    _check_arguments(h, 1, weight, bias, 1.0, skip, emb, scale, shift, activation)
    _check_statistics(h, mean, rstd)
    if out is None:
        out = h.new_empty(h.shape)
    _check_out(h, out)
    _check_inference("group_norm_silu_with_statistics", h, skip, emb, scale, shift, weight, bias, mean, rstd, out)
    torch.ops.brainkernels.group_norm_silu_into(h, skip, emb, scale, shift, weight, bias, mean, rstd, activation, out)
    return out


# --- the shared structure of the cpu and triton backends --------------------------------------


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows(t: Tensor) -> Tensor:
    """The (N, C, S) view of an (N, C, *spatial) tensor; a copy only when the spatial dimensions
    cannot be collapsed in place (slices along several of them, unusual permutations)."""
    shape = (t.shape[0], t.shape[1], math.prod(t.shape[2:]))
    try:
        return t.view(shape)
    except RuntimeError:
        return t.reshape(shape)


def _expand_groups(t: Tensor, channels: int) -> Tensor:
    """(N, G) -> (N, C): each group's value for each of its channels."""
    n, groups = t.shape
    return t[:, :, None].expand(n, groups, channels // groups).reshape(n, channels)


class _Coefficients:
    """Per-(sample, channel) float64 coefficients that reduce the op to w = h + skip (or h).

    x = half * w + emb is at its group's mean where w = center; with d = w - center, the
    normalised input is xhat = d * xa and the pre-activation u = d * alpha + beta. Kernels
    subtract center before scaling, so inputs with |mean| >> std lose no more digits than
    F.group_norm does."""

    def __init__(self, h: Tensor, skip, emb, scale, shift, weight, bias, mean: Tensor, rstd: Tensor):
        channels = h.shape[1]
        self.half = 0.5 if skip is not None else 1.0
        self.rstd = _expand_groups(rstd.double(), channels)
        mean = _expand_groups(mean.double(), channels)
        self.center = (mean - emb.double() if emb is not None else mean) / self.half
        self.gamma = weight.double() if weight is not None else 1.0
        self.beta_affine = bias.double() if bias is not None else 0.0
        self.film = 1.0 + scale.double() if scale is not None else 1.0
        self.xa = self.half * self.rstd
        self.alpha = self.xa * (self.gamma * self.film)
        self.beta = self.beta_affine * self.film * torch.ones_like(self.rstd)
        if shift is not None:
            self.beta = self.beta + shift.double()


def _for_kernel(t: Tensor, shape: tuple[int, int], dtype: torch.dtype) -> Tensor:
    return t.expand(shape).to(dtype).contiguous()


def _statistics(mean_parts: Tensor, m2_parts: Tensor, counts: Tensor, h: Tensor, skip, emb, num_groups: int,
                eps: float) -> tuple[Tensor, Tensor]:
    """Combine per-(row, chunk) moments of w into per-(sample, group) mean and rstd of x
    (Chan et al.'s parallel variance formula, in float64)."""
    batch, channels = h.shape[:2]
    half = 0.5 if skip is not None else 1.0
    chunks = counts.shape[0]
    mean = mean_parts.double().view(batch, channels, chunks) * half
    if emb is not None:
        mean = mean + emb.double()[:, :, None]
    m2 = m2_parts.double().view(batch, channels, chunks) * (half * half)
    per_group = channels // num_groups * chunks
    mean = mean.reshape(batch, num_groups, per_group)
    m2 = m2.reshape(batch, num_groups, per_group)
    counts = counts.double().repeat(channels // num_groups)
    total = counts.sum()
    group_mean = (mean * counts).sum(-1) / total
    group_m2 = m2.sum(-1) + (counts * (mean - group_mean[..., None]) ** 2).sum(-1)
    rstd = (group_m2 / total + eps).rsqrt()
    stat_dtype = _stat_dtype(h.dtype)
    return group_mean.to(stat_dtype), rstd.to(stat_dtype)


def _chunk_counts(spatial: int, chunk: int, device: torch.device) -> Tensor:
    chunks = -(-spatial // chunk)
    return (spatial - torch.arange(chunks, device=device) * chunk).clamp(max=chunk)


def _statistics_kernels(kernels, h, skip, emb, num_groups, eps):
    """(N, G) mean and rstd of x from one moments pass over h and skip, read in place."""
    h3, skip3 = _rows(h), (_rows(skip) if skip is not None else None)
    if h.numel() == 0:
        nan = torch.full((h.shape[0], num_groups), math.nan, dtype=_stat_dtype(h.dtype), device=h.device)
        return nan, nan.clone()
    chunk = kernels.chunk_size(h3.shape[0] * h3.shape[1], h3.shape[2])
    mean_parts, m2_parts = kernels.moments(h3, skip3, chunk, _stat_dtype(h.dtype))
    return _statistics(mean_parts, m2_parts, _chunk_counts(h3.shape[2], chunk, h.device), h, skip, emb, num_groups,
                       eps)


def _normalise_kernels(kernels, h, skip, emb, scale, shift, weight, bias, mean, rstd, activation, out) -> None:
    """Writes act(GroupNorm(x) * (1 + scale) + shift) with the given statistics into ``out``."""
    if h.numel() == 0:
        return
    h3, skip3 = _rows(h), (_rows(skip) if skip is not None else None)
    out3 = out.view(out.shape[0], out.shape[1], -1)  # writes must land in out: a view, never a copy
    shape, stat_dtype = tuple(h.shape[:2]), _stat_dtype(h.dtype)
    coefficients = _Coefficients(h, skip, emb, scale, shift, weight, bias, mean, rstd)
    center, alpha, beta = (_for_kernel(t, shape, stat_dtype)
                           for t in (coefficients.center, coefficients.alpha, coefficients.beta))
    kernels.forward(h3, skip3, center, alpha, beta, activation == "silu", kernels.chunk_size(shape[0] * shape[1],
                    h3.shape[2]), out3)


def _forward_kernels(kernels, h, skip, emb, scale, shift, weight, bias, num_groups, eps, activation):
    mean, rstd = _statistics_kernels(kernels, h, skip, emb, num_groups, eps)
    out = h.new_empty(h.shape)
    _normalise_kernels(kernels, h, skip, emb, scale, shift, weight, bias, mean, rstd, activation, out)
    return out, mean, rstd


def _backward_kernels(kernels, grad_out, h, skip, emb, scale, shift, weight, bias, mean, rstd, num_groups, eps,
                      activation, input_grad):
    batch, channels = h.shape[:2]
    shape = (batch, channels)
    if h.numel() == 0:  # nothing flows back (and the statistics of empty groups are NaN)
        small = (h.new_zeros(shape), h.new_zeros(shape), h.new_zeros(shape), h.new_zeros(channels),
                 h.new_zeros(channels))
        return (h.new_zeros(h.shape if input_grad else (0,)), *small)
    h3, skip3, grad3 = _rows(h), (_rows(skip) if skip is not None else None), _rows(grad_out)
    spatial, stat_dtype = h3.shape[2], _stat_dtype(h.dtype)
    k = _Coefficients(h, skip, emb, scale, shift, weight, bias, mean, rstd)
    center, alpha, beta = (_for_kernel(t, shape, stat_dtype) for t in (k.center, k.alpha, k.beta))
    silu = activation == "silu"
    chunk = kernels.chunk_size(batch * channels, spatial)
    sums = kernels.backward_sums(h3, skip3, grad3, center, alpha, beta, _for_kernel(k.xa, shape, stat_dtype), silu,
                                 chunk)
    sum_gu, sum_gu_xhat, sum_xhat = sums.double().view(3, batch, channels, -1).sum(-1)
    # dL/dxhat = g_u * gain; with m1, m2 the group means of gain * g_u and gain * g_u * xhat,
    # dL/dx = rstd * (gain * g_u - m1 - xhat * m2), the usual normalisation backward.
    gain = (k.gamma * k.film) * torch.ones(shape, dtype=torch.float64, device=h.device)
    count = channels // num_groups * spatial
    m1 = _expand_groups((gain * sum_gu).view(batch, num_groups, -1).sum(-1) / count, channels)
    m2 = _expand_groups((gain * sum_gu_xhat).view(batch, num_groups, -1).sum(-1) / count, channels)
    grad_emb = k.rstd * (gain * sum_gu - spatial * m1 - m2 * sum_xhat)
    grad_scale = k.gamma * sum_gu_xhat + k.beta_affine * sum_gu
    ones = torch.ones(channels, dtype=torch.float64, device=h.device)
    grad_weight = (k.film * sum_gu_xhat).sum(0) * ones
    grad_bias = (k.film * sum_gu).sum(0) * ones
    grad_input = h.new_empty((0,))
    if input_grad:
        p = k.half * k.rstd * gain
        q = -k.half * k.rstd * m2 * k.xa
        r = -k.half * k.rstd * m1
        p, q, r = (_for_kernel(t, shape, stat_dtype) for t in (p, q, r))
        grad_input = kernels.backward_input(h3, skip3, grad3, center, alpha, beta, p, q, r, silu, chunk)
        grad_input = grad_input.view(h.shape)
    small = (grad_emb, grad_scale, sum_gu, grad_weight, grad_bias)
    return (grad_input, *(t.to(h.dtype) for t in small))


class _CpuKernels:
    """The C++/OpenMP kernels behind the interface the Triton module has too."""

    @staticmethod
    def chunk_size(rows: int, spatial: int) -> int:
        return min(CPU_CHUNK, spatial)

    @staticmethod
    def _common(h3: Tensor, skip3: Tensor | None, chunk: int) -> tuple:
        skip_args = (skip3.data_ptr(), list(skip3.stride())) if skip3 is not None else (0, [0, 0, 0])
        return (list(h3.shape), chunk, h3.data_ptr(), list(h3.stride()), *skip_args)

    @staticmethod
    def _count(h3: Tensor, chunk: int) -> int:
        return h3.shape[0] * h3.shape[1] * -(-h3.shape[2] // chunk)

    @classmethod
    def moments(cls, h3, skip3, chunk, partial_dtype):
        mean, m2 = (h3.new_empty((cls._count(h3, chunk),), dtype=partial_dtype) for _ in range(2))
        _extension.load().group_norm_silu_moments_cpu(
            _extension.dtype_code(h3.dtype), *cls._common(h3, skip3, chunk), mean.data_ptr(), m2.data_ptr(),
            torch.get_num_threads(),
        )
        return mean, m2

    @classmethod
    def forward(cls, h3, skip3, center, alpha, beta, silu, chunk, out3):
        _extension.load().group_norm_silu_forward_cpu(
            _extension.dtype_code(h3.dtype), int(silu), *cls._common(h3, skip3, chunk), center.data_ptr(),
            alpha.data_ptr(), beta.data_ptr(), out3.data_ptr(), list(out3.stride()), torch.get_num_threads(),
        )

    @classmethod
    def backward_sums(cls, h3, skip3, grad3, center, alpha, beta, xa, silu, chunk):
        sums = h3.new_empty((3, cls._count(h3, chunk)), dtype=alpha.dtype)
        _extension.load().group_norm_silu_backward_sums_cpu(
            _extension.dtype_code(h3.dtype), int(silu), *cls._common(h3, skip3, chunk), grad3.data_ptr(),
            list(grad3.stride()), center.data_ptr(), alpha.data_ptr(), beta.data_ptr(), xa.data_ptr(), sums.data_ptr(),
            torch.get_num_threads(),
        )
        return sums

    @classmethod
    def backward_input(cls, h3, skip3, grad3, center, alpha, beta, p, q, r, silu, chunk):
        grad_input = h3.new_empty(h3.shape)
        _extension.load().group_norm_silu_backward_input_cpu(
            _extension.dtype_code(h3.dtype), int(silu), *cls._common(h3, skip3, chunk), grad3.data_ptr(),
            list(grad3.stride()), center.data_ptr(), alpha.data_ptr(), beta.data_ptr(), p.data_ptr(), q.data_ptr(),
            r.data_ptr(), grad_input.data_ptr(), torch.get_num_threads(),
        )
        return grad_input


def _triton_kernels():
    from brainkernels.triton import group_norm_silu as triton_kernels

    return triton_kernels


# --- the reference backend --------------------------------------------------------------------


def _reference_x(h, skip, emb) -> Tensor:
    """x = (h + skip) / 2 + emb in float32 (float64 for float64 h)."""
    stat_dtype = _stat_dtype(h.dtype)
    x = h.to(stat_dtype) if skip is None else (h.to(stat_dtype) + skip.to(stat_dtype)) / 2
    return x if emb is None else x + _per_channel(emb.to(stat_dtype), h.dim())


def _statistics_reference(h, skip, emb, num_groups, eps):
    if h.numel() == 0:  # as the kernels: the statistics of empty groups are NaN
        nan = torch.full((h.shape[0], num_groups), math.nan, dtype=_stat_dtype(h.dtype), device=h.device)
        return nan, nan.clone()
    var, mean = torch.var_mean(_reference_x(h, skip, emb).reshape(h.shape[0], num_groups, -1), dim=-1, correction=0)
    return mean, (var + eps).rsqrt()


def _normalise_reference(h, skip, emb, scale, shift, weight, bias, mean, rstd, activation, out) -> None:
    stat_dtype, channels, dim = _stat_dtype(h.dtype), h.shape[1], h.dim()
    x = _reference_x(h, skip, emb)
    y = (x - _per_channel(_expand_groups(mean.to(stat_dtype), channels), dim)) * _per_channel(
        _expand_groups(rstd.to(stat_dtype), channels), dim)
    if weight is not None:
        y = y * _per_channel(weight.to(stat_dtype), dim)
    if bias is not None:
        y = y + _per_channel(bias.to(stat_dtype), dim)
    if scale is not None:
        y = y * (1 + _per_channel(scale.to(stat_dtype), dim))
    if shift is not None:
        y = y + _per_channel(shift.to(stat_dtype), dim)
    out.copy_(F.silu(y) if activation == "silu" else y)


def _forward_reference(h, skip, emb, scale, shift, weight, bias, num_groups, eps, activation):
    out = group_norm_silu_reference(h, num_groups, weight, bias, eps, skip=skip, emb=emb, scale=scale, shift=shift,
                                    activation=activation)
    return (out.contiguous(), *_statistics_reference(h, skip, emb, num_groups, eps))


def _backward_reference(grad_out, h, skip, emb, scale, shift, weight, bias, mean, rstd, num_groups, eps,
                        activation, input_grad):
    """Autograd through the reference, with absent per-channel tensors as identities so every
    gradient exists."""
    shape = h.shape[:2]

    def leaf(t, default):
        return (t if t is not None else default).detach().requires_grad_()

    with torch.enable_grad():
        inputs = [
            leaf(h, h),
            leaf(emb, h.new_zeros(shape)),
            leaf(scale, h.new_zeros(shape)),
            leaf(shift, h.new_zeros(shape)),
            leaf(weight, h.new_ones(shape[1])),
            leaf(bias, h.new_zeros(shape[1])),
        ]
        h_leaf, emb_leaf, scale_leaf, shift_leaf, weight_leaf, bias_leaf = inputs
        out = group_norm_silu_reference(h_leaf, num_groups, weight_leaf, bias_leaf, eps,
                                        skip=skip.detach() if skip is not None else None, emb=emb_leaf,
                                        scale=scale_leaf, shift=shift_leaf, activation=activation)
        grads = torch.autograd.grad(out, inputs, grad_out)
    grad_input = grads[0].contiguous() if input_grad else h.new_empty((0,))
    return (grad_input, *grads[1:])


def _backend_table(with_kernels, reference) -> dict:
    """backend name -> implementation: ``with_kernels`` on the C++ or the Triton kernels, or the reference."""
    return {
        "cpu": lambda *args: with_kernels(_CpuKernels, *args),
        "triton": lambda *args: with_kernels(_triton_kernels(), *args),
        "reference": reference,
    }


_FORWARD = _backend_table(_forward_kernels, _forward_reference)
_BACKWARD = _backend_table(_backward_kernels, _backward_reference)
_STATISTICS = _backend_table(_statistics_kernels, _statistics_reference)
_NORMALISE = _backend_table(_normalise_kernels, _normalise_reference)


@torch.library.custom_op("brainkernels::group_norm_silu", mutates_args=())
def _group_norm_silu(
    h: Tensor,
    skip: Tensor | None,
    emb: Tensor | None,
    scale: Tensor | None,
    shift: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    num_groups: int,
    eps: float,
    activation: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Op form of :func:`group_norm_silu` (arguments validated); returns (out, mean, rstd),
    mean and rstd per (sample, group) of x in float32 (float64 for float64 inputs)."""
    backend = backends.resolve(h.device, tuple(_FORWARD))
    return _FORWARD[backend](h, skip, emb, scale, shift, weight, bias, num_groups, eps, activation)


@_group_norm_silu.register_fake
def _(h, skip, emb, scale, shift, weight, bias, num_groups, eps, activation):
    stats = h.new_empty((h.shape[0], num_groups), dtype=_stat_dtype(h.dtype))
    return h.new_empty(h.shape), stats, torch.empty_like(stats)


@torch.library.custom_op("brainkernels::group_norm_silu_backward", mutates_args=())
def _group_norm_silu_backward(
    grad_out: Tensor,
    h: Tensor,
    skip: Tensor | None,
    emb: Tensor | None,
    scale: Tensor | None,
    shift: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    rstd: Tensor,
    num_groups: int,
    eps: float,
    activation: str,
    input_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (input, emb, scale, shift, weight, bias) of group_norm_silu, all in h's dtype.

    ``input`` is the gradient of h and equally of skip (shape (0,) when ``input_grad`` is False);
    the others exist even for absent arguments (as if they were the identity)."""
    backend = backends.resolve(h.device, tuple(_BACKWARD))
    return _BACKWARD[backend](grad_out, h, skip, emb, scale, shift, weight, bias, mean, rstd, num_groups, eps,
                              activation, input_grad)


@_group_norm_silu_backward.register_fake
def _(grad_out, h, skip, emb, scale, shift, weight, bias, mean, rstd, num_groups, eps, activation, input_grad):
    per_sample = (h.shape[0], h.shape[1])
    return (
        h.new_empty(h.shape if input_grad else (0,)),
        h.new_empty(per_sample),
        h.new_empty(per_sample),
        h.new_empty(per_sample),
        h.new_empty(h.shape[1]),
        h.new_empty(h.shape[1]),
    )


def _setup_context(ctx, inputs, output) -> None:
    h, skip, emb, scale, shift, weight, bias, num_groups, eps, activation = inputs
    _, mean, rstd = output
    ctx.save_for_backward(h, skip, emb, scale, shift, weight, bias, mean, rstd)
    ctx.num_groups, ctx.eps, ctx.activation = num_groups, eps, activation
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # no zero gradients made for mean and rstd


def _backward(ctx, grad_out, _grad_mean, _grad_rstd):
    h, skip, emb, scale, shift, weight, bias, mean, rstd = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if grad_out is None:
        return (None,) * 10
    input_grad = needs[0] or needs[1]
    grad_input, grad_emb, grad_scale, grad_shift, grad_weight, grad_bias = _group_norm_silu_backward(
        grad_out, h, skip, emb, scale, shift, weight, bias, mean, rstd, ctx.num_groups, ctx.eps, ctx.activation,
        input_grad,
    )

    def wanted(index: int, given: Tensor | None, grad: Tensor) -> Tensor | None:
        return grad if given is not None and needs[index] else None

    return (
        grad_input if needs[0] else None,
        wanted(1, skip, grad_input),
        wanted(2, emb, grad_emb),
        wanted(3, scale, grad_scale),
        wanted(4, shift, grad_shift),
        wanted(5, weight, grad_weight),
        wanted(6, bias, grad_bias),
        None,
        None,
        None,
    )


_group_norm_silu.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("brainkernels::group_norm_statistics", mutates_args=())
def _group_norm_statistics(h: Tensor, skip: Tensor | None, emb: Tensor | None, num_groups: int,
                           eps: float) -> tuple[Tensor, Tensor]:
    """Op form of :func:`group_norm_statistics` (arguments validated): (mean, rstd)."""
    backend = backends.resolve(h.device, tuple(_STATISTICS))
    return _STATISTICS[backend](h, skip, emb, num_groups, eps)


@_group_norm_statistics.register_fake
def _(h, skip, emb, num_groups, eps):
    mean = h.new_empty((h.shape[0], num_groups), dtype=_stat_dtype(h.dtype))
    return mean, torch.empty_like(mean)


@torch.library.custom_op("brainkernels::group_norm_silu_into", mutates_args=("out",))
def _group_norm_silu_into(h: Tensor, skip: Tensor | None, emb: Tensor | None, scale: Tensor | None,
                          shift: Tensor | None, weight: Tensor | None, bias: Tensor | None, mean: Tensor, rstd: Tensor,
                          activation: str, out: Tensor) -> None:
    """Op form of :func:`group_norm_silu_with_statistics` (arguments validated), writing into out."""
    backend = backends.resolve(h.device, tuple(_NORMALISE))
    _NORMALISE[backend](h, skip, emb, scale, shift, weight, bias, mean, rstd, activation, out)


@_group_norm_silu_into.register_fake
def _(h, skip, emb, scale, shift, weight, bias, mean, rstd, activation, out):
    return None
