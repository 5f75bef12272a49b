"""PyTorch's 3D convolution, through oneDNN for a single float32 volume.

For a batch of one, PyTorch (2.13) sends a float32 3D convolution of an input under about a
million elements (16 channels of 40^3; the rule is PyTorch's own) to its reference im2col
implementation, ``slow_conv3d``, which also allocates a column buffer 27 times the input. PatchDDM
samples one such volume per step on a 32^3 cohort, and the slab-wise inference convolves slabs
of that size. With a 3^3 kernel oneDNN is far faster there (one AVX-512 thread: 16 channels of
32^3 68 -> 4.9 ms, 32 channels of 16^3 12 -> 2.1 ms, a 10x32x32 slab of 16 channels 20 -> 1.0
ms); above the threshold PyTorch picks oneDNN itself. 1^3 kernels stay with PyTorch's choice (the
reference path is faster there: 0.3 against 1.0 ms). Values agree to float32 rounding; gradients
flow through PyTorch's convolution backward as before. Under ``torch.compile`` the compiler
chooses; under autocast PyTorch's convolution runs in 16 bits, through oneDNN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _through_onednn(x: Tensor, weight: Tensor) -> bool:
    return (not torch.compiler.is_compiling() and x.device.type == "cpu" and x.dtype == torch.float32
            and x.dim() == 5 and x.shape[0] == 1 and weight.shape[-1] > 1 and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def conv3d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int | tuple[int, ...] = 1,
           padding: int | tuple[int, ...] = 0) -> Tensor:
    """``F.conv3d(x, weight, bias, stride, padding)`` (no dilation, no groups); a single float32
    CPU volume goes through oneDNN."""
    if not _through_onednn(x, weight):
        return F.conv3d(x, weight, bias, stride, padding)
    stride, padding = ([value] * 3 if isinstance(value, int) else list(value) for value in (stride, padding))
    return torch.ops.aten.mkldnn_convolution(x.contiguous(), weight.contiguous(), bias, padding, stride, [1, 1, 1], 1)
