"""The diffusion U-Net of PatchDDM (Bieder et al., MIDL 2023; thesis ch. 7): the guided-diffusion
U-Net with no attention and averaged skip connections ``(h + s) / 2``, in 3D (PatchDDM) or 2D (the
INR's DDM+GG baseline). :class:`DiffusionEncoder` is its downward half with a regression head
(the noisy-image regressor of gradient guidance).

Layout (as the paper's configuration: 29 base channels, channel multipliers (1, 3, 4, 4, 4, 4, 4),
2 residual blocks per level, GroupNorm with 29 groups, the timestep embedding added before the
second normalisation of each block): an input convolution; per level, ``blocks`` residual blocks
and (except at the last level) a stride-2 convolution; two residual blocks in the middle; per
level upwards, ``blocks + 1`` residual blocks, each taking the average of the incoming tensor and
one stored skip (the last block of a level brings the channels to those of the next skip, which
is why skips can be averaged instead of concatenated), then nearest-neighbour upsampling and a
convolution; a GroupNorm + SiLU + convolution head (zero-initialised).

Every GroupNorm + SiLU + convolution is a :class:`brainkernels.nn.GroupNormSiLUConv`: with
``fused=True`` (the default) it stores no activation of its own and folds the skip average and
the timestep embedding into the normalisation; ``fused=False`` is the same network in plain
PyTorch (same parameters, same outputs), the baseline of the memory benchmarks.

Inference (no grad) averages each skip into the decoder's tensor in place and frees it before the
block runs, and the blocks never hold a full-size activation (see ``GroupNormSiLUConv``).

Training can recompute (``recompute``, see :data:`RECOMPUTE`): a recomputed residual block or
upsampling keeps only its inputs, which the U-Net holds anyway (the previous block's output and
the skip), and runs its forward a second time in backward (``torch.utils.checkpoint``,
non-reentrant, so it composes with the fused blocks, autocast and DDP). What it saves is the
block's inner tensor (and the upsampling's interpolated input), one full-size tensor per unit.
The skips themselves are never recomputed: the decoder needs them in the forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from brainkernels.nn.convolution import Conv3d
from brainkernels.nn.norm_act_conv import GroupNormSiLUConv

PAPER_CHANNELS = 29
PAPER_CHANNEL_MULT = (1, 3, 4, 4, 4, 4, 4)
Recompute = Literal["none", "blocks", "all"]
RECOMPUTE: tuple[Recompute, ...] = ("none", "blocks", "all")
CONVOLUTIONS = {2: nn.Conv2d, 3: Conv3d}
_FUNCTIONAL_CONVOLUTIONS = {2: F.conv2d, 3: F.conv3d}


def timestep_embedding(timesteps: Tensor, channels: int, max_period: float = 10000.0) -> Tensor:
    """(N, channels) sinusoidal embedding of (N,) timesteps, as in guided diffusion."""
    half = channels // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(embedding, (0, channels % 2))


class ResidualBlock(nn.Module):
    """``x' = (x + skip) / 2`` (or ``x``); ``h = conv(act(GN(x'))); h = conv(act(GN(h + emb)))``;
    returns ``h + x'`` (``x'`` through a 1x1 convolution when the channels change)."""

    def __init__(self, in_channels: int, out_channels: int, embedding_channels: int, groups: int,
                 fused: bool, dims: int = 3) -> None:
        super().__init__()
        self.in_layers = GroupNormSiLUConv(groups, in_channels, out_channels, dims=dims, fused=fused)
        self.embedding = nn.Linear(embedding_channels, out_channels)
        self.out_layers = GroupNormSiLUConv(groups, out_channels, out_channels, dims=dims, fused=fused)
        nn.init.zeros_(self.out_layers.conv.weight)
        nn.init.zeros_(self.out_layers.conv.bias)
        self.shortcut = CONVOLUTIONS[dims](in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, emb: Tensor, skip: Tensor | None = None) -> Tensor:
        h = self.in_layers(x, skip)
        h = self.out_layers(h, emb=self.embedding(F.silu(emb)))
        # The residual is added in place and, for an averaged input, as two halves, so the
        # average (x + skip) / 2 is never materialised.
        if self.shortcut is None:
            h = h.add_(x, alpha=0.5 if skip is not None else 1.0)
            return h if skip is None else h.add_(skip, alpha=0.5)
        if skip is None:
            return h.add_(self.shortcut(x))
        # conv(x') = (conv(x) + conv(skip)) / 2 for a 1x1 convolution with its bias counted once.
        convolution = _FUNCTIONAL_CONVOLUTIONS[x.dim() - 2]
        linear = convolution(x, self.shortcut.weight) + convolution(skip, self.shortcut.weight)
        return h.add_(linear, alpha=0.5).add_(self.shortcut.bias.view(1, -1, *([1] * (x.dim() - 2))))


class Upsample(nn.Module):
    def __init__(self, channels: int, dims: int = 3) -> None:
        super().__init__()
        self.conv = CONVOLUTIONS[dims](channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class DiffusionUNet(nn.Module):
    """``forward(x, timesteps) -> epsilon`` for x (N, in_channels, D, H, W) (``dims=2``: (N,
    in_channels, H, W)) with every spatial size a multiple of :attr:`size_multiple` (``2 ** (levels
    - 1)``)."""

    def __init__(self, in_channels: int, out_channels: int = 1, channels: int = PAPER_CHANNELS,
                 channel_mult: Sequence[int] = PAPER_CHANNEL_MULT, blocks: int = 2, groups: int | None = None,
                 fused: bool = True, recompute: Recompute = "none", *, dims: int = 3) -> None:
        super().__init__()
        if dims not in CONVOLUTIONS:
            raise ValueError(f"dims must be 2 or 3; got {dims!r}")
        self.dims = dims
        channel_mult = tuple(int(m) for m in channel_mult)
        groups = channels if groups is None else groups
        widths = [channels * m for m in channel_mult]
        if in_channels < 1 or out_channels < 1 or channels < 1 or blocks < 1 or not channel_mult:
            raise ValueError("in_channels, out_channels, channels and blocks must be positive and channel_mult "
                             "non-empty")
        if any(m < 1 for m in channel_mult) or any(width % groups for width in widths):
            raise ValueError(f"groups ({groups}) must divide every level's channels {widths}")
        self.size_multiple = 2 ** (len(channel_mult) - 1)
        self.channels = channels
        self.recompute = recompute
        embedding_channels = 4 * channels
        self.time_embed = nn.Sequential(nn.Linear(channels, embedding_channels), nn.SiLU(),
                                        nn.Linear(embedding_channels, embedding_channels))

        def block(c_in: int, c_out: int) -> ResidualBlock:
            return ResidualBlock(c_in, c_out, embedding_channels, groups, fused, dims)

        self.input_conv = CONVOLUTIONS[dims](in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        # Per level (0: full resolution): its down blocks, the stride-2 convolution to the next
        # level, its up blocks and the upsampling back to the level above (the ModuleLists keep
        # the parameter names of the flat layout).
        levels = range(len(widths))
        self._down_blocks: list[list[ResidualBlock]] = [[] for _ in levels]
        self._downsample: list[nn.Module] = []
        self._up_blocks: list[list[ResidualBlock]] = [[] for _ in levels]
        self._upsample: list[Upsample | None] = [None for _ in levels]
        skip_channels, width = [channels], channels
        for level, level_width in enumerate(widths):
            for _ in range(blocks):
                self.down.append(block(width, level_width))
                self._down_blocks[level].append(self.down[-1])
                width = level_width
                skip_channels.append(width)
            if level < len(widths) - 1:
                self.down.append(CONVOLUTIONS[dims](width, width, 3, stride=2, padding=1))
                self._downsample.append(self.down[-1])
                skip_channels.append(width)
        self.middle = nn.ModuleList([block(width, width), block(width, width)])
        self.up = nn.ModuleList()
        for level in reversed(levels):
            for _ in range(blocks + 1):
                skip_channels.pop()
                # The block's output must match the next skip it will be averaged with.
                target = skip_channels[-1] if skip_channels else channels
                self.up.append(block(width, target))
                self._up_blocks[level].append(self.up[-1])
                width = target
            if level > 0:
                self.up.append(Upsample(width, dims))
                self._upsample[level] = self.up[-1]
        self.head = GroupNormSiLUConv(groups, width, out_channels, dims=dims, fused=fused)
        nn.init.zeros_(self.head.conv.weight)
        nn.init.zeros_(self.head.conv.bias)

    @property
    def recompute(self) -> Recompute:
        return self._recompute

    @recompute.setter
    def recompute(self, value: Recompute) -> None:
        if value not in RECOMPUTE:
            raise ValueError(f"recompute must be one of {', '.join(RECOMPUTE)}; got {value!r}")
        self._recompute = value

    def _unit(self, module: nn.Module, *inputs: Tensor | None) -> Tensor:
        """A residual block or upsampling."""
        if torch.is_grad_enabled() and self._recompute != "none":
            return checkpoint(module, *inputs, use_reentrant=False)
        return module(*inputs)

    def check_shape(self, shape: Sequence[int]) -> None:
        spatial = tuple(shape[2:])
        if len(spatial) != self.dims or any(n % self.size_multiple for n in spatial):
            layout = "(N, C, D, H, W) inputs with D, H, W" if self.dims == 3 else "(N, C, H, W) inputs with H, W"
            raise ValueError(f"the U-Net takes {layout} multiples of {self.size_multiple}; got shape {tuple(shape)} "
                             "(pad the image, see patchddm.data.pad_to_multiple)")

    def forward(self, x: Tensor, timesteps: Tensor) -> Tensor:
        self.check_shape(x.shape)
        emb = self.time_embed(timestep_embedding(timesteps, self.channels).to(x.dtype))
        return self.head(self._level(0, [self.input_conv(x)], emb))

    def _level(self, level: int, skips: list[Tensor], emb: Tensor) -> Tensor:
        """The U-Net from ``level`` down and back: ``skips`` holds only the tensor entering the
        level (its first skip; passed in a list so that popping it frees it at inference)."""
        h = skips[0]
        for block in self._down_blocks[level]:
            h = self._unit(block, h, emb)
            skips.append(h)
        if level + 1 == len(self._down_blocks):
            for block in self.middle:
                h = self._unit(block, h, emb)
        elif torch.is_grad_enabled() and self._recompute == "all":
            h = checkpoint(self._below, level + 1, self._downsample[level](h), emb, use_reentrant=False)
        else:
            h = self._below(level + 1, self._downsample[level](h), emb)
        for block in self._up_blocks[level]:
            if torch.is_grad_enabled():
                h = self._unit(block, h, emb, skips.pop())
            else:
                # Inference: average into h's own memory (h is this loop's intermediate) and free
                # the skip before the block runs.
                h = block(h.add_(skips.pop()).mul_(0.5), emb)
        return h

    def _below(self, level: int, x: Tensor, emb: Tensor) -> Tensor:
        """Levels ``level`` and deeper, upsampled to the level above."""
        skips = [x]
        del x  # the caller holds no reference either: at inference the skip is freed when popped
        return self._unit(self._upsample[level], self._level(level, skips, emb))


class DiffusionEncoder(nn.Module):
    """``forward(x, timesteps) -> (N, outputs)``: the U-Net's downward half (input convolution, per
    level ``blocks`` residual blocks and a stride-2 convolution, two middle blocks) with the same
    timestep embedding, then GroupNorm + SiLU, the spatial mean and a linear layer. As guided
    diffusion's noisy-image classifier, trained on x_t at every t, its gradient guides sampling."""

    def __init__(self, in_channels: int, outputs: int = 1, channels: int = PAPER_CHANNELS,
                 channel_mult: Sequence[int] = PAPER_CHANNEL_MULT, blocks: int = 2, groups: int | None = None,
                 fused: bool = True, *, dims: int = 3) -> None:
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        groups = channels if groups is None else groups
        widths = [channels * m for m in channel_mult]
        if dims not in CONVOLUTIONS:
            raise ValueError(f"dims must be 2 or 3; got {dims!r}")
        if in_channels < 1 or outputs < 1 or channels < 1 or blocks < 1 or not channel_mult:
            raise ValueError("in_channels, outputs, channels and blocks must be positive and channel_mult non-empty")
        if any(m < 1 for m in channel_mult) or any(width % groups for width in widths):
            raise ValueError(f"groups ({groups}) must divide every level's channels {widths}")
        self.dims, self.channels = dims, channels
        self.size_multiple = 2 ** (len(channel_mult) - 1)
        embedding_channels = 4 * channels
        self.time_embed = nn.Sequential(nn.Linear(channels, embedding_channels), nn.SiLU(),
                                        nn.Linear(embedding_channels, embedding_channels))
        self.input_conv = CONVOLUTIONS[dims](in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        width = channels
        for level, level_width in enumerate(widths):
            for _ in range(blocks):
                self.down.append(ResidualBlock(width, level_width, embedding_channels, groups, fused, dims))
                width = level_width
            if level < len(widths) - 1:
                self.down.append(CONVOLUTIONS[dims](width, width, 3, stride=2, padding=1))
        self.middle = nn.ModuleList([ResidualBlock(width, width, embedding_channels, groups, fused, dims)
                                     for _ in range(2)])
        self.norm = nn.GroupNorm(groups, width)
        self.out = nn.Linear(width, outputs)

    def forward(self, x: Tensor, timesteps: Tensor) -> Tensor:
        spatial = tuple(x.shape[2:])
        if len(spatial) != self.dims or any(n % self.size_multiple for n in spatial):
            raise ValueError(f"the encoder takes {self.dims}D inputs (N, C, ...) with every spatial size a multiple "
                             f"of {self.size_multiple}; got shape {tuple(x.shape)}")
        emb = self.time_embed(timestep_embedding(timesteps, self.channels).to(x.dtype))
        h = self.input_conv(x)
        for module in [*self.down, *self.middle]:
            h = module(h, emb) if isinstance(module, ResidualBlock) else module(h)
        return self.out(F.silu(self.norm(h)).mean(dim=tuple(range(2, h.dim()))))
