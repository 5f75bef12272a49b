"""Triton kernels for brainkernels::group_norm_silu (contract in brainkernels.ops.group_norm_silu).

The same four passes as the C++ kernels (csrc/group_norm_silu/group_norm_silu.h): moments of
w = h + skip per (row, chunk), the forward y = act((w - center) * alpha + beta), and the two
backward passes.
A row is one (sample, channel) of the (N, C, S) views; one program handles one chunk of a row,
so a batch of one volume with few channels still fills the GPU. Element math and sums are in
float32 (float64 for float64 tensors); 16-bit tensors are loaded and stored as they are.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_BLOCK = 1024
TARGET_PROGRAMS = 1024  # enough chunks in flight to fill a large GPU


@triton.jit
def _row_base(program, num_chunks, channels, chunk, spatial):
    row = program // num_chunks
    begin = (program % num_chunks) * chunk
    end = tl.minimum(begin + chunk, spatial)
    return row, row // channels, row % channels, begin, end


@triton.jit
def _load_w(h_ptr, skip_ptr, n, c, offsets, mask, h_sn, h_sc, h_ss, s_sn, s_sc, s_ss,
            HAS_SKIP: tl.constexpr, COMPUTE: tl.constexpr):
    w = tl.load(h_ptr + n * h_sn + c * h_sc + offsets * h_ss, mask=mask, other=0.0).to(COMPUTE)
    if HAS_SKIP:
        w += tl.load(skip_ptr + n * s_sn + c * s_sc + offsets * s_ss, mask=mask, other=0.0).to(COMPUTE)
    return w


@triton.jit
def _activation_grad(u, SILU: tl.constexpr):
    if SILU:
        s = tl.sigmoid(u)
        return s * (1.0 + u * (1.0 - s))
    else:
        return tl.full(u.shape, 1.0, u.dtype)


@triton.jit
def _moments_kernel(
    h_ptr, skip_ptr, mean_ptr, m2_ptr,
    channels, spatial, chunk, num_chunks, h_sn, h_sc, h_ss, s_sn, s_sc, s_ss,
    HAS_SKIP: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr,
):
    program = tl.program_id(0).to(tl.int64)
    row, n, c, begin, end = _row_base(program, num_chunks, channels, chunk, spatial)
    # Deviations from the chunk's first value: no cancellation when |mean| >> std.
    first = begin + tl.arange(0, 1)
    pivot = tl.sum(_load_w(h_ptr, skip_ptr, n, c, first, first < end, h_sn, h_sc, h_ss, s_sn, s_sc, s_ss,
                           HAS_SKIP, COMPUTE), 0)
    sum1 = tl.zeros([BLOCK], COMPUTE)
    sum2 = tl.zeros([BLOCK], COMPUTE)
    for start in range(begin, end, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < end
        w = _load_w(h_ptr, skip_ptr, n, c, offsets, mask, h_sn, h_sc, h_ss, s_sn, s_sc, s_ss, HAS_SKIP, COMPUTE)
        d = tl.where(mask, w - pivot, 0.0)
        sum1 += d
        sum2 += d * d
    count = (end - begin).to(COMPUTE)
    s1 = tl.sum(sum1, 0)
    s2 = tl.sum(sum2, 0)
    tl.store(mean_ptr + program, pivot + s1 / count)
    tl.store(m2_ptr + program, tl.maximum(s2 - s1 * s1 / count, 0.0))


@triton.jit
def _forward_kernel(
    h_ptr, skip_ptr, center_ptr, alpha_ptr, beta_ptr, out_ptr,
    channels, spatial, chunk, num_chunks, h_sn, h_sc, h_ss, s_sn, s_sc, s_ss, o_sn, o_sc, o_ss,
    HAS_SKIP: tl.constexpr, SILU: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr,
):
    program = tl.program_id(0).to(tl.int64)
    row, n, c, begin, end = _row_base(program, num_chunks, channels, chunk, spatial)
    center = tl.load(center_ptr + row)
    alpha = tl.load(alpha_ptr + row)
    beta = tl.load(beta_ptr + row)
    for start in range(begin, end, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < end
        w = _load_w(h_ptr, skip_ptr, n, c, offsets, mask, h_sn, h_sc, h_ss, s_sn, s_sc, s_ss, HAS_SKIP, COMPUTE)
        u = (w - center) * alpha + beta
        if SILU:
            u = u * tl.sigmoid(u)
        tl.store(out_ptr + n * o_sn + c * o_sc + offsets * o_ss, u.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_sums_kernel(
    h_ptr, skip_ptr, grad_ptr, center_ptr, alpha_ptr, beta_ptr, xa_ptr, sums_ptr,
    channels, spatial, chunk, num_chunks, h_sn, h_sc, h_ss, s_sn, s_sc, s_ss, g_sn, g_sc, g_ss,
    HAS_SKIP: tl.constexpr, SILU: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr,
):
    program = tl.program_id(0).to(tl.int64)
    row, n, c, begin, end = _row_base(program, num_chunks, channels, chunk, spatial)
    center = tl.load(center_ptr + row)
    alpha = tl.load(alpha_ptr + row)
    beta = tl.load(beta_ptr + row)
    xa = tl.load(xa_ptr + row)
    sum_gu = tl.zeros([BLOCK], COMPUTE)
    sum_gu_xhat = tl.zeros([BLOCK], COMPUTE)
    sum_xhat = tl.zeros([BLOCK], COMPUTE)
    for start in range(begin, end, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < end
        w = _load_w(h_ptr, skip_ptr, n, c, offsets, mask, h_sn, h_sc, h_ss, s_sn, s_sc, s_ss, HAS_SKIP, COMPUTE)
        grad = tl.load(grad_ptr + n * g_sn + c * g_sc + offsets * g_ss, mask=mask, other=0.0).to(COMPUTE)
        d = w - center
        gu = grad * _activation_grad(d * alpha + beta, SILU)
        xhat = tl.where(mask, d * xa, 0.0)
        sum_gu += gu
        sum_gu_xhat += gu * xhat
        sum_xhat += xhat
    tasks = tl.num_programs(0).to(tl.int64)
    tl.store(sums_ptr + program, tl.sum(sum_gu, 0))
    tl.store(sums_ptr + tasks + program, tl.sum(sum_gu_xhat, 0))
    tl.store(sums_ptr + 2 * tasks + program, tl.sum(sum_xhat, 0))


@triton.jit
def _backward_input_kernel(
    h_ptr, skip_ptr, grad_ptr, center_ptr, alpha_ptr, beta_ptr, p_ptr, q_ptr, r_ptr, out_ptr,
    channels, spatial, chunk, num_chunks, h_sn, h_sc, h_ss, s_sn, s_sc, s_ss, g_sn, g_sc, g_ss,
    HAS_SKIP: tl.constexpr, SILU: tl.constexpr, COMPUTE: tl.constexpr, BLOCK: tl.constexpr,
):
    program = tl.program_id(0).to(tl.int64)
    row, n, c, begin, end = _row_base(program, num_chunks, channels, chunk, spatial)
    center = tl.load(center_ptr + row)
    alpha = tl.load(alpha_ptr + row)
    beta = tl.load(beta_ptr + row)
    p = tl.load(p_ptr + row)
    q = tl.load(q_ptr + row)
    r = tl.load(r_ptr + row)
    for start in range(begin, end, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        mask = offsets < end
        w = _load_w(h_ptr, skip_ptr, n, c, offsets, mask, h_sn, h_sc, h_ss, s_sn, s_sc, s_ss, HAS_SKIP, COMPUTE)
        grad = tl.load(grad_ptr + n * g_sn + c * g_sc + offsets * g_ss, mask=mask, other=0.0).to(COMPUTE)
        d = w - center
        gu = grad * _activation_grad(d * alpha + beta, SILU)
        tl.store(out_ptr + row * spatial + offsets, (gu * p + d * q + r).to(out_ptr.dtype.element_ty), mask=mask)


def _block(spatial: int) -> int:
    return min(MAX_BLOCK, max(16, triton.next_power_of_2(spatial)))


def chunk_size(rows: int, spatial: int) -> int:
    """Voxels per program along a row: a multiple of the block, with about TARGET_PROGRAMS programs."""
    block = _block(spatial)
    blocks = triton.cdiv(spatial, block)
    chunks_per_row = max(1, min(blocks, triton.cdiv(TARGET_PROGRAMS, max(rows, 1))))
    return block * triton.cdiv(blocks, chunks_per_row)


def _compute(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _launch(kernel, h3: Tensor, skip3: Tensor | None, chunk: int, tensors: tuple, strides: tuple = (), **meta):
    batch, channels, spatial = h3.shape
    num_chunks = triton.cdiv(spatial, chunk)
    skip_strides = skip3.stride() if skip3 is not None else (0, 0, 0)
    with torch.device(h3.device):
        kernel[(batch * channels * num_chunks,)](
            h3, skip3 if skip3 is not None else h3, *tensors,
            channels, spatial, chunk, num_chunks, *h3.stride(), *skip_strides, *strides,
            HAS_SKIP=skip3 is not None, COMPUTE=_compute(h3.dtype), BLOCK=_block(spatial), **meta,
        )
    return batch * channels * num_chunks


def moments(h3: Tensor, skip3: Tensor | None, chunk: int, partial_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    count = h3.shape[0] * h3.shape[1] * triton.cdiv(h3.shape[2], chunk)
    mean, m2 = (h3.new_empty((count,), dtype=partial_dtype) for _ in range(2))
    _launch(_moments_kernel, h3, skip3, chunk, (mean, m2))
    return mean, m2


def forward(h3: Tensor, skip3: Tensor | None, center: Tensor, alpha: Tensor, beta: Tensor, silu: bool, chunk: int,
            out3: Tensor) -> None:
    _launch(_forward_kernel, h3, skip3, chunk, (center, alpha, beta, out3), out3.stride(), SILU=silu)


def backward_sums(h3: Tensor, skip3: Tensor | None, grad3: Tensor, center: Tensor, alpha: Tensor, beta: Tensor,
                  xa: Tensor, silu: bool, chunk: int) -> Tensor:
    count = h3.shape[0] * h3.shape[1] * triton.cdiv(h3.shape[2], chunk)
    sums = h3.new_empty((3, count), dtype=alpha.dtype)
    _launch(_backward_sums_kernel, h3, skip3, chunk, (grad3, center, alpha, beta, xa, sums), grad3.stride(), SILU=silu)
    return sums


def backward_input(h3: Tensor, skip3: Tensor | None, grad3: Tensor, center: Tensor, alpha: Tensor, beta: Tensor,
                   p: Tensor, q: Tensor, r: Tensor, silu: bool, chunk: int) -> Tensor:
    grad_input = h3.new_empty(h3.shape)
    _launch(_backward_input_kernel, h3, skip3, chunk, (grad3, center, alpha, beta, p, q, r, grad_input), grad3.stride(),
            SILU=silu)
    return grad_input
