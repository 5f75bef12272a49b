"""Triton kernels for brainkernels::coordinate_mlp (contract and packed layout in
brainkernels.ops.coordinate_mlp and csrc/coordinate_mlp/coordinate_mlp.h; the activation
codes, the :class:`Spec` and the voxel :class:`Geometry` in brainkernels.specs.coordinate_mlp).

Forward: one program per block of BLOCK_M voxels; the block's activations (BLOCK_M x WP, WP the
width padded to a power of two >= 16) stay in registers, each layer a ``tl.dot`` with the layer's
weights (transposed on load). Backward: ``num_partials`` persistent programs, each owning a fixed,
strided set of blocks and one row of the gradient partials; per block it recomputes the forward,
keeping the layer inputs in a per-program scratch (``(depth - 1) x BLOCK_M x WP``, global memory
that stays in L2), then walks back. Gradients go to the program's own partial row (atomics only
for their coherence: no two programs share a row), so the summed result is deterministic.

Products: float32 in IEEE float32; bfloat16 (whose parameters are exact in float32) in TF32 on the
tensor cores, with float32 activations and accumulation, more precise than PyTorch's bfloat16
layers; float64 in float64. (bfloat16 operands would be faster still, but the Triton interpreter
cannot multiply them, so they could not be tested here.)
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from brainkernels.specs.coordinate_mlp import Spec, empty_grad_coords, geometry

MIN_BLOCK, MAX_BLOCK = 16, 128
# One software-pipelining stage: each stage holds a copy of a layer's weight tile and activation
# block in shared memory, and at width 128 three stages (Triton's default) need 288 KiB, more than
# an H100/H200 has (227 KiB per block); the loop over layers has nothing to overlap anyway.
_STAGES = 1


def block_rows(block_size: int) -> int:
    """Voxels per program: block_size rounded up to a power of two in [16, 128] (64 by default)."""
    if not block_size:
        return 64
    return min(MAX_BLOCK, max(MIN_BLOCK, triton.next_power_of_2(block_size)))


@triton.jit
def _dot(a, b, TF32: tl.constexpr):
    if a.dtype == tl.float64:
        return tl.dot(a, b, out_dtype=tl.float64)
    elif TF32:
        return tl.dot(a, b, input_precision="tf32")
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _activation(f, g, omega, scale, ACT: tl.constexpr):
    """(a, da/df, da/dg): WIRE cos(w f) exp(-(s g)^2), SIREN sin(w f), ReLU max(f, 0)."""
    if ACT == 0:
        v = g * scale
        gauss = tl.exp(-(v * v))
        a = tl.cos(f * omega) * gauss
        return a, -omega * tl.sin(f * omega) * gauss, -2.0 * scale * v * a
    elif ACT == 1:
        return tl.sin(f * omega), omega * tl.cos(f * omega), f * 0.0
    else:
        positive = f > 0.0
        return tl.where(f < 0.0, 0.0, f), tl.where(positive, 1.0, 0.0).to(f.dtype), f * 0.0


@triton.jit
def _voxels(coords_ptr, idx, valid, s1, s2, off0, off1, off2, divisor, c_stride0, c_stride1, DTYPE: tl.constexpr,
            DIMS: tl.constexpr, GRID: tl.constexpr):
    """Coordinates (x0, x1, x2) of voxels idx (x2 unused in 2D), in the compute dtype."""
    if GRID:
        i2 = idx % s2
        rest = idx // s2
        i1 = rest % s1
        i0 = rest // s1
        if DIMS == 3:
            x0 = (i0.to(DTYPE) - off0) / divisor
            x1 = (i1.to(DTYPE) - off1) / divisor
            x2 = (i2.to(DTYPE) - off2) / divisor
        else:
            x0 = (i1.to(DTYPE) - off0) / divisor
            x1 = (i2.to(DTYPE) - off1) / divisor
            x2 = x1
        x0 = tl.where(valid, x0, 0.0)
        x1 = tl.where(valid, x1, 0.0)
        x2 = tl.where(valid, x2, 0.0)
    else:
        base = coords_ptr + idx * c_stride0
        x0 = tl.load(base, mask=valid, other=0.0).to(DTYPE)
        x1 = tl.load(base + c_stride1, mask=valid, other=0.0).to(DTYPE)
        if DIMS == 3:
            x2 = tl.load(base + 2 * c_stride1, mask=valid, other=0.0).to(DTYPE)
        else:
            x2 = x1
    return x0, x1, x2


@triton.jit
def _first_pre(packed_ptr, x0, x1, x2, unit_row, n, nmask, W: tl.constexpr, DIMS: tl.constexpr, MAPS: tl.constexpr):
    """Pre-activation of the first layer's map whose units start at packed row unit_row."""
    rows = unit_row + n
    bias = tl.load(packed_ptr + MAPS * W * DIMS + rows, mask=nmask, other=0.0)
    pre = bias[None, :] + x0[:, None] * tl.load(packed_ptr + rows * DIMS, mask=nmask, other=0.0)[None, :]
    pre += x1[:, None] * tl.load(packed_ptr + rows * DIMS + 1, mask=nmask, other=0.0)[None, :]
    if DIMS == 3:
        pre += x2[:, None] * tl.load(packed_ptr + rows * DIMS + 2, mask=nmask, other=0.0)[None, :]
    return pre


@triton.jit
def _weight_t(packed_ptr, offset, unit_row, n, nmask, W: tl.constexpr):
    """(k, n) tile of a hidden map's weight, transposed: element [k, n] = weight[unit_row + n, k]."""
    return tl.load(packed_ptr + offset + (unit_row + n)[None, :] * W + n[:, None],
                   mask=nmask[None, :] & nmask[:, None], other=0.0)


@triton.jit
def _weight(packed_ptr, offset, unit_row, n, nmask, W: tl.constexpr):
    """(n, k) tile of a hidden map's weight: element [n, k] = weight[unit_row + n, k]."""
    return tl.load(packed_ptr + offset + (unit_row + n)[:, None] * W + n[None, :],
                   mask=nmask[:, None] & nmask[None, :], other=0.0)


@triton.jit
def _hidden_pre(packed_ptr, h, layer, unit_row, n, nmask, W: tl.constexpr, DIMS: tl.constexpr, MAPS: tl.constexpr,
                TF32: tl.constexpr):
    offset = MAPS * W * DIMS + MAPS * W + (layer - 1) * (MAPS * W * W + MAPS * W)
    bias = tl.load(packed_ptr + offset + MAPS * W * W + unit_row + n, mask=nmask, other=0.0)
    return _dot(h, _weight_t(packed_ptr, offset, unit_row, n, nmask, W), TF32) + bias[None, :]


@triton.jit
def _forward_kernel(
    packed_ptr, coords_ptr, out_ptr, M, s1, s2, off0, off1, off2, divisor, c_stride0, c_stride1, omega, scale,
    W: tl.constexpr, WP: tl.constexpr, DIMS: tl.constexpr, DEPTH: tl.constexpr, MAPS: tl.constexpr,
    ACT: tl.constexpr, RESIDUAL: tl.constexpr, GRID: tl.constexpr, TF32: tl.constexpr, BLOCK_M: tl.constexpr,
):
    DTYPE = packed_ptr.dtype.element_ty
    idx = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    valid = idx < M
    n = tl.arange(0, WP)
    nmask = n < W
    x0, x1, x2 = _voxels(coords_ptr, idx, valid, s1, s2, off0, off1, off2, divisor, c_stride0, c_stride1, DTYPE, DIMS,
                         GRID)
    f = _first_pre(packed_ptr, x0, x1, x2, 0, n, nmask, W, DIMS, MAPS)
    g = f
    if MAPS == 2:
        g = _first_pre(packed_ptr, x0, x1, x2, W, n, nmask, W, DIMS, MAPS)
    h, _, _ = _activation(f, g, omega, scale, ACT)
    h = tl.where(nmask[None, :], h, 0.0)
    for layer in range(1, DEPTH - 1):
        f = _hidden_pre(packed_ptr, h, layer, 0, n, nmask, W, DIMS, MAPS, TF32)
        g = f
        if MAPS == 2:
            g = _hidden_pre(packed_ptr, h, layer, W, n, nmask, W, DIMS, MAPS, TF32)
        a, _, _ = _activation(f, g, omega, scale, ACT)
        if RESIDUAL:
            a = (h + a) * 0.5
        h = tl.where(nmask[None, :], a, 0.0)
    last = MAPS * W * DIMS + MAPS * W + (DEPTH - 2) * (MAPS * W * W + MAPS * W)
    f = tl.sum(h * tl.load(packed_ptr + last + n, mask=nmask, other=0.0)[None, :], axis=1)
    f += tl.load(packed_ptr + last + MAPS * W)
    g = f
    if MAPS == 2:
        g = tl.sum(h * tl.load(packed_ptr + last + W + n, mask=nmask, other=0.0)[None, :], axis=1)
        g += tl.load(packed_ptr + last + MAPS * W + 1)
    out, _, _ = _activation(f, g, omega, scale, ACT)
    tl.store(out_ptr + idx, out.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _output_unit_backward(packed_ptr, partial, h, grad, n, nmask, omega, scale, W: tl.constexpr, U: tl.constexpr,
                          LAST: tl.constexpr, MAPS: tl.constexpr, ACT: tl.constexpr, WEIGHT_GRADS: tl.constexpr):
    """Adds the output unit's weight and bias gradients; returns the gradient at its input h.

    A function of its own because its per-voxel f, g, d_f, d_g are vectors, while the hidden layers'
    are matrices under the same names: the GPU compiler types a name assigned before and inside a
    loop as one loop-carried variable and refuses the change of shape (the interpreter does not).
    """
    w_f = tl.load(packed_ptr + LAST + n, mask=nmask, other=0.0)
    f = tl.sum(h * w_f[None, :], axis=1) + tl.load(packed_ptr + LAST + U)
    g = f
    w_g = w_f
    if MAPS == 2:
        w_g = tl.load(packed_ptr + LAST + W + n, mask=nmask, other=0.0)
        g = tl.sum(h * w_g[None, :], axis=1) + tl.load(packed_ptr + LAST + U + 1)
    _, d_f, d_g = _activation(f, g, omega, scale, ACT)
    dy_f = grad * d_f
    if WEIGHT_GRADS:
        tl.atomic_add(partial + LAST + n, tl.sum(dy_f[:, None] * h, axis=0), mask=nmask)
    tl.atomic_add(partial + LAST + U + n, tl.where(n == 0, tl.sum(dy_f, axis=0), 0.0), mask=n == 0)
    upstream = dy_f[:, None] * w_f[None, :]
    if MAPS == 2:
        dy_g = grad * d_g
        if WEIGHT_GRADS:
            tl.atomic_add(partial + LAST + W + n, tl.sum(dy_g[:, None] * h, axis=0), mask=nmask)
        tl.atomic_add(partial + LAST + U + 1 + n, tl.where(n == 0, tl.sum(dy_g, axis=0), 0.0), mask=n == 0)
        upstream += dy_g[:, None] * w_g[None, :]
    return upstream


@triton.jit
def _backward_kernel(
    packed_ptr, coords_ptr, grad_ptr, grad_packed_ptr, partials_ptr, grad_coords_ptr, scratch_ptr,
    M, num_blocks, s1, s2, off0, off1, off2, divisor, c_stride0, c_stride1, g_stride0, g_stride1, g_stride2,
    omega, scale, packed_size,
    W: tl.constexpr, WP: tl.constexpr, DIMS: tl.constexpr, DEPTH: tl.constexpr, MAPS: tl.constexpr,
    ACT: tl.constexpr, RESIDUAL: tl.constexpr, GRID: tl.constexpr, TF32: tl.constexpr, BLOCK_M: tl.constexpr,
    WEIGHT_GRADS: tl.constexpr, COORDS_GRAD: tl.constexpr,
):
    DTYPE = packed_ptr.dtype.element_ty
    program = tl.program_id(0)
    if program == 0:
        partial = grad_packed_ptr
    else:
        partial = partials_ptr + (program - 1).to(tl.int64) * packed_size
    scratch = scratch_ptr + program.to(tl.int64) * ((DEPTH - 1) * BLOCK_M * WP)
    rows = tl.arange(0, BLOCK_M)
    n = tl.arange(0, WP)
    nmask = n < W
    tile = rows[:, None] * WP + n[None, :]
    first_voxel = rows.to(tl.int64)
    U: tl.constexpr = MAPS * W
    HIDDEN: tl.constexpr = U * DIMS + U
    LAST: tl.constexpr = HIDDEN + (DEPTH - 2) * (U * W + U)
    for block in range(program, num_blocks, tl.num_programs(0)):
        idx = first_voxel + block * BLOCK_M  # the wrapper keeps block * BLOCK_M below 2^31
        valid = idx < M
        x0, x1, x2 = _voxels(coords_ptr, idx, valid, s1, s2, off0, off1, off2, divisor, c_stride0, c_stride1, DTYPE,
                             DIMS, GRID)
        # Recompute the forward, keeping each hidden and last layer's input.
        f = _first_pre(packed_ptr, x0, x1, x2, 0, n, nmask, W, DIMS, MAPS)
        g = f
        if MAPS == 2:
            g = _first_pre(packed_ptr, x0, x1, x2, W, n, nmask, W, DIMS, MAPS)
        h, _, _ = _activation(f, g, omega, scale, ACT)
        h = tl.where(nmask[None, :], h, 0.0)
        tl.store(scratch + tile, h)
        for layer in range(1, DEPTH - 1):
            f = _hidden_pre(packed_ptr, h, layer, 0, n, nmask, W, DIMS, MAPS, TF32)
            g = f
            if MAPS == 2:
                g = _hidden_pre(packed_ptr, h, layer, W, n, nmask, W, DIMS, MAPS, TF32)
            a, _, _ = _activation(f, g, omega, scale, ACT)
            if RESIDUAL:
                a = (h + a) * 0.5
            h = tl.where(nmask[None, :], a, 0.0)
            tl.store(scratch + layer * (BLOCK_M * WP) + tile, h)
        tl.debug_barrier()

        # Output unit.
        rest = idx // s2
        grad_offset = (rest // s1) * g_stride0 + (rest % s1) * g_stride1 + (idx % s2) * g_stride2
        grad = tl.load(grad_ptr + grad_offset, mask=valid, other=0.0).to(DTYPE)
        upstream = _output_unit_backward(packed_ptr, partial, h, grad, n, nmask, omega, scale, W, U, LAST, MAPS, ACT,
                                         WEIGHT_GRADS)

        # Hidden layers, last to first.
        for step in range(0, DEPTH - 2):
            layer = DEPTH - 2 - step
            h_in = tl.load(scratch + (layer - 1) * (BLOCK_M * WP) + tile)
            offset = HIDDEN + (layer - 1) * (U * W + U)
            f = _hidden_pre(packed_ptr, h_in, layer, 0, n, nmask, W, DIMS, MAPS, TF32)
            g = f
            if MAPS == 2:
                g = _hidden_pre(packed_ptr, h_in, layer, W, n, nmask, W, DIMS, MAPS, TF32)
            _, d_f, d_g = _activation(f, g, omega, scale, ACT)
            if RESIDUAL:
                upstream = upstream * 0.5
            dy_f = tl.where(nmask[None, :], upstream * d_f, 0.0)
            weight_tile = n[:, None] * W + n[None, :]
            weight_mask = nmask[:, None] & nmask[None, :]
            if WEIGHT_GRADS:
                tl.atomic_add(partial + offset + weight_tile, _dot(tl.trans(dy_f), h_in, False), mask=weight_mask)
            tl.atomic_add(partial + offset + U * W + n, tl.sum(dy_f, axis=0), mask=nmask)
            below = _dot(dy_f, _weight(packed_ptr, offset, 0, n, nmask, W), TF32)
            if MAPS == 2:
                dy_g = tl.where(nmask[None, :], upstream * d_g, 0.0)
                if WEIGHT_GRADS:
                    tl.atomic_add(partial + offset + W * W + weight_tile, _dot(tl.trans(dy_g), h_in, False),
                                  mask=weight_mask)
                tl.atomic_add(partial + offset + U * W + W + n, tl.sum(dy_g, axis=0), mask=nmask)
                below += _dot(dy_g, _weight(packed_ptr, offset, W, n, nmask, W), TF32)
            if RESIDUAL:
                upstream = upstream + below
            else:
                upstream = below

        # First layer: coordinate weights, folded biases, coordinates.
        f = _first_pre(packed_ptr, x0, x1, x2, 0, n, nmask, W, DIMS, MAPS)
        g = f
        if MAPS == 2:
            g = _first_pre(packed_ptr, x0, x1, x2, W, n, nmask, W, DIMS, MAPS)
        _, d_f, d_g = _activation(f, g, omega, scale, ACT)
        for m in tl.static_range(MAPS):
            if m == 0:
                dy = tl.where(nmask[None, :], upstream * d_f, 0.0)
            else:
                dy = tl.where(nmask[None, :], upstream * d_g, 0.0)
            units = m * W + n
            if WEIGHT_GRADS:
                tl.atomic_add(partial + units * DIMS, tl.sum(dy * x0[:, None], axis=0), mask=nmask)
                tl.atomic_add(partial + units * DIMS + 1, tl.sum(dy * x1[:, None], axis=0), mask=nmask)
                if DIMS == 3:
                    tl.atomic_add(partial + units * DIMS + 2, tl.sum(dy * x2[:, None], axis=0), mask=nmask)
            tl.atomic_add(partial + U * DIMS + units, tl.sum(dy, axis=0), mask=nmask)
            if COORDS_GRAD:
                for c in tl.static_range(DIMS):
                    w_c = tl.load(packed_ptr + units * DIMS + c, mask=nmask, other=0.0)
                    target = grad_coords_ptr + idx * DIMS + c
                    contribution = tl.sum(dy * w_c[None, :], axis=1)
                    if m == 0:
                        tl.store(target, contribution.to(grad_coords_ptr.dtype.element_ty), mask=valid)
                    else:
                        previous = tl.load(target, mask=valid, other=0.0).to(DTYPE)
                        tl.store(target, (previous + contribution).to(grad_coords_ptr.dtype.element_ty), mask=valid)
        tl.debug_barrier()


def _geometry(spec: Spec, coords: Tensor | None) -> dict:
    where = geometry(spec, coords)
    return dict(s1=where.shape[1], s2=where.shape[2], off0=where.offsets[0], off1=where.offsets[1],
                off2=where.offsets[2], divisor=where.divisor, c_stride0=where.strides[0], c_stride1=where.strides[1])


def _constants(spec: Spec, block: int) -> dict:
    return dict(W=spec.width, WP=max(16, triton.next_power_of_2(spec.width)), DIMS=spec.dims, DEPTH=spec.depth,
                MAPS=spec.maps, ACT=spec.activation_code, RESIDUAL=spec.residual,
                TF32=spec.dtype == torch.bfloat16, BLOCK_M=block)


def forward(packed: Tensor, coords: Tensor | None, spec: Spec) -> Tensor:
    out = torch.empty(spec.out_shape(coords), dtype=spec.dtype, device=packed.device)
    count = out.numel()
    if count == 0:
        return out
    block = block_rows(spec.block_size)
    with torch.device(packed.device):
        _forward_kernel[(triton.cdiv(count, block),)](
            packed, coords if coords is not None else packed, out, count, **_geometry(spec, coords),
            omega=spec.omega, scale=spec.scale, GRID=coords is None, **_constants(spec, block),
            num_warps=8 if spec.width > 64 else 4, num_stages=_STAGES,
        )
    return out


def backward(grad_out: Tensor, packed: Tensor, coords: Tensor | None, spec: Spec, coords_grad: bool,
             num_partials: int) -> tuple[Tensor, Tensor, Tensor]:
    grad_packed = torch.zeros_like(packed)
    partials = torch.zeros((num_partials - 1, packed.shape[0]), dtype=packed.dtype, device=packed.device)
    grad_coords = empty_grad_coords(spec, coords, coords_grad, packed.device)
    count = spec.num_voxels(coords)
    if count == 0:
        return grad_packed, partials, grad_coords
    if count >= 2**31:
        raise ValueError(f"the Triton backward handles fewer than 2^31 voxels per call; got {count}")
    block = block_rows(spec.block_size)
    constants = _constants(spec, block)
    scratch = torch.empty((num_partials, spec.depth - 1, block, constants["WP"]), dtype=packed.dtype,
                          device=packed.device)
    strides = [0] * (3 - grad_out.dim()) + list(grad_out.stride())
    with torch.device(packed.device):
        _backward_kernel[(num_partials,)](
            packed, coords if coords is not None else packed, grad_out, grad_packed,
            partials if partials.numel() else packed,
            grad_coords if grad_coords.numel() else packed, scratch, count, math.ceil(count / block),
            **_geometry(spec, coords), g_stride0=strides[0], g_stride1=strides[1], g_stride2=strides[2],
            omega=spec.omega, scale=spec.scale, packed_size=packed.shape[0], GRID=coords is None,
            WEIGHT_GRADS=spec.weight_grads, COORDS_GRAD=bool(grad_coords.numel()), **constants,
            num_warps=8 if spec.width > 64 else 4, num_stages=_STAGES,
        )
    if num_partials > 1:
        grad_packed += partials.sum(0)
    return grad_packed, partials, grad_coords
