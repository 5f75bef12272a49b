"""Triton kernels for brainkernels::extract_patches3d (contract in brainkernels.ops.extract_patches3d)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 512


@triton.jit
def _patch_voxels(centers_ptr, program, block, channels, depth, height, width, SIZE: tl.constexpr, BLOCK: tl.constexpr):
    """Volume voxel (c, z, y, x) of each element of one block of a patch, and masks."""
    patch = program // channels
    channel = program % channels
    k = block * BLOCK + tl.arange(0, BLOCK)
    in_patch = k < SIZE * SIZE * SIZE
    # Clamping keeps index arithmetic small for centres far outside the volume.
    cz = tl.minimum(tl.maximum(tl.load(centers_ptr + patch * 3), -SIZE), depth + SIZE)
    cy = tl.minimum(tl.maximum(tl.load(centers_ptr + patch * 3 + 1), -SIZE), height + SIZE)
    cx = tl.minimum(tl.maximum(tl.load(centers_ptr + patch * 3 + 2), -SIZE), width + SIZE)
    z = cz - SIZE // 2 + k // (SIZE * SIZE)
    y = cy - SIZE // 2 + (k // SIZE) % SIZE
    x = cx - SIZE // 2 + k % SIZE
    inside = in_patch & (z >= 0) & (z < depth) & (y >= 0) & (y < height) & (x >= 0) & (x < width)
    return channel, z, y, x, k, in_patch, inside


@triton.jit
def _forward_kernel(
    volume_ptr, centers_ptr, patches_ptr, padding_value,
    channels, depth, height, width, stride_c, stride_d, stride_h, stride_w,
    SIZE: tl.constexpr, BLOCK: tl.constexpr,
):
    program = tl.program_id(0).to(tl.int64)
    channel, z, y, x, k, in_patch, inside = _patch_voxels(
        centers_ptr, program, tl.program_id(1), channels, depth, height, width, SIZE, BLOCK
    )
    source = volume_ptr + channel * stride_c + z * stride_d + y * stride_h + x * stride_w
    values = tl.load(source, mask=inside, other=padding_value)
    tl.store(patches_ptr + program * (SIZE * SIZE * SIZE) + k, values, mask=in_patch)


@triton.jit
def _backward_kernel(
    grad_patches_ptr, centers_ptr, grad_volume_ptr,
    channels, depth, height, width,
    SIZE: tl.constexpr, BLOCK: tl.constexpr,
):
    program = tl.program_id(0).to(tl.int64)
    channel, z, y, x, k, in_patch, inside = _patch_voxels(
        centers_ptr, program, tl.program_id(1), channels, depth, height, width, SIZE, BLOCK
    )
    grad = tl.load(grad_patches_ptr + program * (SIZE * SIZE * SIZE) + k, mask=in_patch, other=0.0)
    target = grad_volume_ptr + ((channel * depth + z) * height + y) * width + x
    tl.atomic_add(target, grad, mask=inside)


def _grid(count: int, channels: int, size: int) -> tuple[int, int]:
    return (count * channels, triton.cdiv(size**3, BLOCK))


def forward(volume: Tensor, centers: Tensor, size: int, padding_value: float) -> Tensor:
    patches = volume.new_empty((centers.shape[0], volume.shape[0], size, size, size))
    if patches.numel() == 0:
        return patches
    with torch.device(volume.device):
        _forward_kernel[_grid(centers.shape[0], volume.shape[0], size)](
            volume, centers, patches, padding_value, *volume.shape, *volume.stride(), SIZE=size, BLOCK=BLOCK
        )
    return patches


def backward(grad_patches: Tensor, centers: Tensor, size: int, volume_shape: list[int]) -> Tensor:
    grad_volume = grad_patches.new_zeros(volume_shape)
    if grad_patches.numel() == 0 or grad_volume.numel() == 0:
        return grad_volume
    with torch.device(grad_patches.device):
        _backward_kernel[_grid(centers.shape[0], volume_shape[0], size)](
            grad_patches, centers, grad_volume, *volume_shape, SIZE=size, BLOCK=BLOCK
        )
    return grad_volume
