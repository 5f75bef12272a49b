"""The PPR network (Bieder et al., MIDL 2022) and its exact fully convolutional rewrite.

The network maps an s^3 patch to its normalised position in the volume. All convolutions are
unpadded ("valid") and every average pooling sees an even size, so the output depends on exactly
the s^3 input voxels. That makes the per-voxel evaluation of the paper rewritable as one dense
pass over the (padded) volume: pooling with stride 2 becomes pooling with stride 1 and every
later layer is dilated by the accumulated stride (the "a trous" rewrite). Both modes use the same
modules and weights and give the same numbers. Dilated convolutions are slow on CPUs, so the
dense mode folds the interleaved sub-grids into the batch instead (see ``_fold``).

Layout for size m and patch s (s = 31):
    Conv(m, 4) 31->28, AvgPool 28->14          "Downsample"
    Residual(m): two Conv(m, 3) 14->10 + centre-cropped skip
    Conv(2m, 3) 10->8, AvgPool 8->4            "Downsample"
    Conv(4m, 4) 4->1                           affine layer over the whole remaining field
    Conv(4m, 1), Conv(3, 1)                    affine layers
Convolutions are spectrally normalised, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

MIN_PATCH, MAX_PATCH = 19, 63


def _even_conv_kernel(size: int) -> int:
    """Kernel (3 or 4) whose valid convolution leaves an even size for the pooling after it."""
    return 3 if (size - 2) % 2 == 0 else 4


@dataclass(frozen=True)
class Geometry:
    """Kernel sizes of the network for one patch size."""

    stem: int
    middle: int
    head: int

    @classmethod
    def for_patch(cls, patch: int) -> Geometry:
        if not MIN_PATCH <= patch <= MAX_PATCH:
            raise ValueError(f"patch must be between {MIN_PATCH} and {MAX_PATCH} voxels; got {patch}")
        stem = _even_conv_kernel(patch)
        size = (patch - stem + 1) // 2 - 4  # after the first pooling and the residual block
        middle = _even_conv_kernel(size)
        head = (size - middle + 1) // 2
        return cls(stem, middle, head)


def _conv(in_channels: int, out_channels: int, kernel: int) -> nn.Module:
    return spectral_norm(nn.Conv3d(in_channels, out_channels, kernel))


class Residual(nn.Module):
    """Two valid 3^3 convolutions; the skip is cropped to the same (smaller) field."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.first = _conv(channels, channels, 3)
        self.second = _conv(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.second(F.relu(self.first(x)))
        return F.relu(x[..., 2:-2, 2:-2, 2:-2] + y)


def _fold(x: Tensor) -> Tensor:
    """(B, C, D, H, W) -> (8B, C, D/2, H/2, W/2): the 8 interleaved sub-grids as a batch.

    A convolution dilated by 2 is the plain convolution of each sub-grid, so the dense network
    runs undilated (fast) convolutions. Odd sizes are padded at the end: valid convolutions look
    only forward, so the padding reaches only outputs past the tile, which are cropped.
    """
    pad = [0, x.shape[4] % 2, 0, x.shape[3] % 2, 0, x.shape[2] % 2]
    x = F.pad(x, pad)
    b, c, d, h, w = x.shape
    x = x.view(b, c, d // 2, 2, h // 2, 2, w // 2, 2).permute(3, 5, 7, 0, 1, 2, 4, 6)
    return x.reshape(8 * b, c, d // 2, h // 2, w // 2)


CHANNELS_LAST = torch.channels_last_3d


def _pool_channels_last(x: Tensor) -> Tensor:
    """avg_pool3d(x, 2, stride=1) of a channels-last tensor, as sums of shifted views (stays channels-last)."""
    x = x[:, :, 1:] + x[:, :, :-1]
    x = x[:, :, :, 1:] + x[:, :, :, :-1]
    return (x[..., 1:] + x[..., :-1]).mul_(0.125)


def _fold_channels_last(x: Tensor) -> Tensor:
    """:func:`_fold` of a channels-last tensor with even sizes, kept channels-last."""
    b, c, d, h, w = x.shape
    x = x.permute(0, 2, 3, 4, 1).view(b, d // 2, 2, h // 2, 2, w // 2, 2, c).permute(2, 4, 6, 0, 1, 3, 5, 7)
    return x.reshape(8 * b, d // 2, h // 2, w // 2, c).permute(0, 4, 1, 2, 3)


def _unfold(x: Tensor) -> Tensor:
    """Inverse of :func:`_fold`."""
    b8, c, d, h, w = x.shape
    x = x.view(2, 2, 2, b8 // 8, c, d, h, w).permute(3, 4, 5, 0, 6, 1, 7, 2)
    return x.reshape(b8 // 8, c, 2 * d, 2 * h, 2 * w)


class PPRNet(nn.Module):
    """Patch position regression network of size ``m`` for ``patch``^3 patches with ``channels`` channels."""

    def __init__(self, m: int = 16, patch: int = 31, channels: int = 1) -> None:
        super().__init__()
        if m < 1:
            raise ValueError(f"m must be at least 1; got {m}")
        self.m, self.patch, self.channels = m, patch, channels
        geometry = self.geometry = Geometry.for_patch(patch)
        self.stem = _conv(channels, m, geometry.stem)
        self.residual = Residual(m)
        self.middle = _conv(m, 2 * m, geometry.middle)
        self.head = _conv(2 * m, 4 * m, geometry.head)
        self.hidden = _conv(4 * m, 4 * m, 1)
        self.out = nn.Conv3d(4 * m, 3, 1)
        # Start at the volume's centre, the mean target: from a zero bias the first few hundred
        # steps only learn this offset (the loss sits near 0.45 meanwhile).
        nn.init.constant_(self.out.bias, 0.5)

    def _pool(self, x: Tensor, dense: bool) -> Tensor:
        # Dense: stride 1 keeps an output for every patch position; the later layers would then
        # need dilation 2, which folding the sub-grids into the batch turns into plain convolutions.
        return _fold(F.avg_pool3d(x, 2, stride=1)) if dense else F.avg_pool3d(x, 2)

    def _layers(self, x: Tensor, dense: bool) -> Tensor:
        x = self._pool(F.relu(self.stem(x)), dense)
        x = self.residual(x)
        x = self._pool(F.relu(self.middle(x)), dense)
        x = F.relu(self.hidden(F.relu(self.head(x))))
        x = self.out(x)
        return _unfold(_unfold(x)) if dense else x

    def forward(self, patches: Tensor) -> Tensor:
        """(N, C, s, s, s) patches -> (N, 3) predicted normalised positions."""
        if patches.dim() != 5 or tuple(patches.shape[1:]) != (self.channels, *(self.patch,) * 3):
            raise ValueError(f"patches must have shape (N, {self.channels}, {self.patch}, {self.patch}, "
                             f"{self.patch}); got {tuple(patches.shape)}")
        return self._layers(patches, dense=False).flatten(1)

    def _layers_channels_last(self, x: Tensor) -> Tensor:
        """``_layers(x, dense=True)`` in the channels-last layout, which the CPU convolutions run
        fastest in (1.6-3x for the 3^3 and 4^3 ones in a profile of a 64^3 tile on a 2-core Zen 5);
        pooling as sums of shifted views and the 1x1 layers as matrix products on the channel axis,
        because PyTorch's avg_pool3d and 1x1 Conv3d were slower than those in that profile. Every
        folded size must be even (see ``forward_dense``)."""
        x = _fold_channels_last(_pool_channels_last(F.relu_(self.stem(x.contiguous(memory_format=CHANNELS_LAST)))))
        x = self.residual(x)
        x = _fold_channels_last(_pool_channels_last(F.relu_(self.middle(x))))
        x = F.relu_(self.head(x)).permute(0, 2, 3, 4, 1)  # (B, D, H, W, C): a contiguous view
        x = F.relu_(F.linear(x, self.hidden.weight.flatten(1), self.hidden.bias))
        x = F.linear(x, self.out.weight.flatten(1), self.out.bias).permute(0, 4, 1, 2, 3)
        return _unfold(_unfold(x))

    def forward_dense(self, padded: Tensor, layout: Literal["channels_last", "contiguous"] = "channels_last") -> Tensor:
        """Predictions for every patch position of a padded region (1, C, D+s-1, H+s-1, W+s-1) -> (1, 3, D, H, W).

        Output voxel (d, h, w) equals ``forward`` on the patch whose first voxel is (d, h, w).
        ``layout="contiguous"`` is the earlier implementation (kept as the benchmarks' baseline);
        the channels-last one gives the same numbers up to float rounding.
        """
        if layout not in ("channels_last", "contiguous"):
            raise ValueError(f"layout must be 'channels_last' or 'contiguous'; got {layout!r}")
        size = [extent - self.patch + 1 for extent in padded.shape[2:]]
        if layout == "contiguous":
            return self._layers(padded, dense=True)[..., :size[0], :size[1], :size[2]]
        # Extend the region at its end so every pooled size is even (the folds need no padding):
        # valid convolutions look only forward, so the extension reaches only cropped outputs.
        g = self.geometry
        extra = [(g.stem + 2 * g.middle - extent) % 4 for extent in padded.shape[2:]]
        padded = F.pad(padded, [0, extra[2], 0, extra[1], 0, extra[0]])
        return self._layers_channels_last(padded)[..., :size[0], :size[1], :size[2]]
