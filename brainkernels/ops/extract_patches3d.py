"""3D patch extraction: cubes of ``size`` voxels around integer centres of a (C, D, H, W) volume.

The gather at the heart of PPR training and patchwise inference. Along each axis, voxel ``k``
of a patch centred at ``c`` is volume index ``c - size // 2 + k``: for odd sizes the patch is
symmetric about ``c``, for even sizes ``c`` is the patch's voxel ``size // 2`` (one more voxel
before the centre than after it). Patch voxels outside the volume read ``padding_value``.
The backward pass adds each patch's gradient back into a zero volume (overlaps sum).
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from brainkernels import _extension, backends

MAX_PATCH_SIZE = 256
VOLUME_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _axis_indices(centers: Tensor, size: int, extent: int) -> tuple[Tensor, Tensor]:
    """Per patch and patch voxel, the clamped volume index along one axis and whether it is inside."""
    index = centers[:, None] - size // 2 + torch.arange(size, device=centers.device)
    inside = (index >= 0) & (index < extent)
    return index.clamp(0, max(extent - 1, 0)), inside


def _patch_indices(centers: Tensor, size: int, shape: tuple[int, int, int]) -> tuple[tuple[Tensor, ...], Tensor]:
    (z, z_in), (y, y_in), (x, x_in) = (_axis_indices(centers[:, a], size, shape[a]) for a in range(3))
    index = (z[:, :, None, None], y[:, None, :, None], x[:, None, None, :])
    inside = z_in[:, :, None, None] & y_in[:, None, :, None] & x_in[:, None, None, :]
    return index, inside


def extract_patches3d_reference(volume: Tensor, centers: Tensor, size: int, padding_value: float = 0.0) -> Tensor:
    """Plain-PyTorch extraction (advanced indexing): the test oracle and the fallback."""
    centers = centers.long()
    index, inside = _patch_indices(centers, size, tuple(volume.shape[1:]))
    if volume.shape[1] * volume.shape[2] * volume.shape[3] == 0:
        values = volume.new_full((volume.shape[0], *inside.shape), padding_value)
    else:
        values = volume[(slice(None), *index)]  # (C, N, s, s, s)
    patches = torch.where(inside, values, torch.tensor(padding_value, dtype=volume.dtype, device=volume.device))
    return patches.transpose(0, 1).contiguous()


def extract_patches3d_backward_reference(
    grad_patches: Tensor, centers: Tensor, size: int, volume_shape: list[int] | tuple[int, ...]
) -> Tensor:
    """Plain-PyTorch backward: scatter-add each patch's gradient into a zero volume."""
    channels, depth, height, width = volume_shape
    grad_volume = grad_patches.new_zeros(tuple(volume_shape))
    if depth * height * width == 0 or grad_patches.numel() == 0:
        return grad_volume
    index, inside = _patch_indices(centers.long(), size, (depth, height, width))
    grad = torch.where(inside, grad_patches.transpose(0, 1), 0)  # (C, N, s, s, s)
    channel = torch.arange(channels, device=grad.device)[:, None, None, None, None]
    grad_volume.index_put_((channel, *index), grad, accumulate=True)
    return grad_volume


def _check_arguments(volume: object, centers: object, size: object, padding_value: object) -> None:
    if not isinstance(volume, Tensor):
        raise TypeError(f"volume must be a torch.Tensor; got {type(volume).__name__}")
    if volume.dim() != 4:
        raise ValueError(f"volume must have shape (C, D, H, W); got {volume.dim()} dimensions {tuple(volume.shape)}")
    if volume.dtype not in VOLUME_DTYPES:
        raise TypeError(f"volume must be float16, bfloat16, float32 or float64; got {volume.dtype}")
    if not isinstance(centers, Tensor):
        raise TypeError(f"centers must be a torch.Tensor of shape (N, 3); got {type(centers).__name__}")
    if centers.dim() != 2 or centers.shape[1] != 3:
        raise ValueError(f"centers must have shape (N, 3) (voxel indices d, h, w); got {tuple(centers.shape)}")
    if centers.device != volume.device:
        raise ValueError(f"centers are on {centers.device} but volume is on {volume.device}; put them on one device")
    if centers.dtype == torch.bool or centers.is_complex():
        raise TypeError(f"centers must hold integer voxel indices; got dtype {centers.dtype}")
    if centers.is_floating_point() and not torch.compiler.is_compiling():
        if not bool(torch.isfinite(centers).all()):
            raise ValueError("centers contain NaN or infinite values")
        if not bool((centers == centers.round()).all()):
            raise ValueError("centers must be integer voxel indices; got non-integer values (round them first)")
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int; got {type(size).__name__}")
    if not 1 <= size <= MAX_PATCH_SIZE:
        raise ValueError(f"size must be between 1 and {MAX_PATCH_SIZE} voxels; got {size}")
    if isinstance(padding_value, bool) or not isinstance(padding_value, numbers.Real):
        raise TypeError(f"padding_value must be a real number; got {type(padding_value).__name__}")


def extract_patches3d(volume: Tensor, centers: Tensor, size: int, padding_value: float = 0.0) -> Tensor:
    """Extract ``size``^3 patches around integer ``centers`` from a (C, D, H, W) volume.

    Args:
        volume: float16/bfloat16/float32/float64 tensor (C, D, H, W); any strides.
        centers: (N, 3) voxel indices (d, h, w), integer dtype or integer-valued floats, on the
            volume's device. Centres may lie anywhere, also far outside the volume.
        size: patch edge length, 1 to ``MAX_PATCH_SIZE``; odd and even sizes as in the module doc.
        padding_value: value of patch voxels outside the volume.

    Returns:
        (N, C, size, size, size) contiguous tensor of the volume's dtype; differentiable in ``volume``.
    """
    _check_arguments(volume, centers, size, padding_value)
    return torch.ops.brainkernels.extract_patches3d(volume, centers.long().contiguous(), size, float(padding_value))


def _padding_bits(padding_value: float, dtype: torch.dtype) -> int:
    """The padding value's bit pattern in ``dtype``, as an unsigned integer (the kernels copy bits)."""
    width = torch.finfo(dtype).bits
    signed = torch.tensor(padding_value, dtype=dtype).view({16: torch.int16, 32: torch.int32, 64: torch.int64}[width])
    return int(signed.item()) & ((1 << width) - 1)


def _forward_cpu(volume: Tensor, centers: Tensor, size: int, padding_value: float) -> Tensor:
    patches = volume.new_empty((centers.shape[0], volume.shape[0], size, size, size))
    _extension.load().extract_patches3d_forward_cpu(
        volume.data_ptr(), _extension.dtype_code(volume.dtype), list(volume.shape), list(volume.stride()),
        centers.data_ptr(), centers.shape[0], size,
        _padding_bits(padding_value, volume.dtype), patches.data_ptr(), torch.get_num_threads(),
    )
    return patches


def _backward_cpu(grad_patches: Tensor, centers: Tensor, size: int, volume_shape: list[int]) -> Tensor:
    grad_volume = grad_patches.new_zeros(volume_shape)
    _extension.load().extract_patches3d_backward_cpu(
        grad_patches.data_ptr(), _extension.dtype_code(grad_patches.dtype), list(volume_shape), centers.data_ptr(),
        centers.shape[0], size,
        grad_volume.data_ptr(), torch.get_num_threads(),
    )
    return grad_volume


def _cuda_stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _forward_cuda(volume: Tensor, centers: Tensor, size: int, padding_value: float) -> Tensor:
    patches = volume.new_empty((centers.shape[0], volume.shape[0], size, size, size))
    with torch.cuda.device(volume.device):
        _extension.load().extract_patches3d_forward_cuda(
            volume.data_ptr(), _extension.dtype_code(volume.dtype), list(volume.shape), list(volume.stride()),
            centers.data_ptr(), centers.shape[0], size,
            _padding_bits(padding_value, volume.dtype), patches.data_ptr(), _cuda_stream(volume.device),
        )
    return patches


def _backward_cuda(grad_patches: Tensor, centers: Tensor, size: int, volume_shape: list[int]) -> Tensor:
    grad_volume = grad_patches.new_zeros(volume_shape)
    with torch.cuda.device(grad_patches.device):
        _extension.load().extract_patches3d_backward_cuda(
            grad_patches.data_ptr(), _extension.dtype_code(grad_patches.dtype), list(volume_shape), centers.data_ptr(),
            centers.shape[0], size,
            grad_volume.data_ptr(), _cuda_stream(grad_patches.device),
        )
    return grad_volume


def _forward_triton(volume: Tensor, centers: Tensor, size: int, padding_value: float) -> Tensor:
    from brainkernels.triton import extract_patches3d as triton_kernels

    return triton_kernels.forward(volume, centers, size, padding_value)


def _backward_triton(grad_patches: Tensor, centers: Tensor, size: int, volume_shape: list[int]) -> Tensor:
    from brainkernels.triton import extract_patches3d as triton_kernels

    return triton_kernels.backward(grad_patches, centers, size, volume_shape)


_FORWARD = {
    "cpu": _forward_cpu,
    "cuda": _forward_cuda,
    "triton": _forward_triton,
    "reference": extract_patches3d_reference,
}
_BACKWARD = {
    "cpu": _backward_cpu,
    "cuda": _backward_cuda,
    "triton": _backward_triton,
    "reference": extract_patches3d_backward_reference,
}


@torch.library.custom_op("brainkernels::extract_patches3d", mutates_args=())
def _extract_patches3d(volume: Tensor, centers: Tensor, size: int, padding_value: float) -> Tensor:
    """Op form of :func:`extract_patches3d`; centers are int64 and contiguous."""
    backend = backends.resolve(volume.device, tuple(_FORWARD))
    return _FORWARD[backend](volume, centers, size, padding_value)


@_extract_patches3d.register_fake
def _(volume: Tensor, centers: Tensor, size: int, padding_value: float) -> Tensor:
    return volume.new_empty((centers.shape[0], volume.shape[0], size, size, size))


@torch.library.custom_op("brainkernels::extract_patches3d_backward", mutates_args=())
def _extract_patches3d_backward(grad_patches: Tensor, centers: Tensor, size: int, volume_shape: list[int]) -> Tensor:
    """Gradient of extract_patches3d with respect to the volume; grad_patches is contiguous float32/float64."""
    backend = backends.resolve(grad_patches.device, tuple(_BACKWARD))
    return _BACKWARD[backend](grad_patches, centers, size, volume_shape)


@_extract_patches3d_backward.register_fake
def _(grad_patches: Tensor, centers: Tensor, size: int, volume_shape: list[int]) -> Tensor:
    return grad_patches.new_empty(volume_shape)


def _setup_forward(ctx, inputs, output) -> None:
    volume, centers, size, _ = inputs
    ctx.save_for_backward(centers)
    ctx.size, ctx.volume_shape, ctx.dtype = size, list(volume.shape), volume.dtype


def _forward_grad(ctx, grad_patches: Tensor):
    (centers,) = ctx.saved_tensors
    # The kernels accumulate in float32/float64: half-precision sums of many overlapping
    # patches would lose most of their digits.
    accumulate_dtype = torch.float64 if ctx.dtype == torch.float64 else torch.float32
    grad = grad_patches.to(accumulate_dtype).contiguous()
    grad_volume = _extract_patches3d_backward(grad, centers, ctx.size, ctx.volume_shape)
    return grad_volume.to(ctx.dtype), None, None, None


def _setup_backward(ctx, inputs, output) -> None:
    _, centers, size, _ = inputs
    ctx.save_for_backward(centers)
    ctx.size = size


def _backward_grad(ctx, grad_grad_volume: Tensor):
    (centers,) = ctx.saved_tensors
    return _extract_patches3d(grad_grad_volume.contiguous(), centers, ctx.size, 0.0), None, None, None


_extract_patches3d.register_autograd(_forward_grad, setup_context=_setup_forward)
_extract_patches3d_backward.register_autograd(_backward_grad, setup_context=_setup_backward)
