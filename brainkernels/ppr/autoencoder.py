"""The paper's baseline: a 3D convolutional autoencoder (after Baur et al., 2021) of size m,
trained with an L1 loss; its anomaly map is the post-filtered reconstruction error."""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.ndimage
import torch
from torch import Tensor, nn

DEPTH = 4


class AutoEncoder(nn.Module):
    """Strided 4^3 convolutions down by 2^4, transposed convolutions back up."""

    def __init__(self, m: int = 16, channels: int = 1) -> None:
        super().__init__()
        if m < 1:
            raise ValueError(f"m must be at least 1; got {m}")
        self.m, self.channels = m, channels
        widths = [channels] + [m * 2**level for level in range(DEPTH)]
        encoder, decoder = [], []
        for level in range(DEPTH):
            encoder += [nn.Conv3d(widths[level], widths[level + 1], 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            decoder += [nn.LeakyReLU(0.2), nn.ConvTranspose3d(widths[level + 1], max(widths[level], m), 4, stride=2,
                                                               padding=1)]
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*reversed(decoder))
        self.output = nn.Conv3d(m, channels, 3, padding=1)

    def forward(self, volumes: Tensor) -> Tensor:
        """(B, C, D, H, W) -> reconstruction of the same shape; D, H, W multiples of 16."""
        if volumes.dim() != 5 or volumes.shape[1] != self.channels or any(n % 2**DEPTH for n in volumes.shape[2:]):
            raise ValueError(f"volumes must have shape (B, {self.channels}, D, H, W) with D, H, W multiples of "
                             f"{2**DEPTH}; got {tuple(volumes.shape)}")
        return self.output(self.decoder(self.encoder(volumes)))


@torch.no_grad()
def reconstruction_error(model: AutoEncoder, volume: Tensor, *, filter: Literal["median", "erosion"] = "erosion",
                         size: int = 5) -> Tensor:
    """(D, H, W) |x - AE(x)| summed over channels, post-filtered as in the paper (size 5 median
    filter for fractures, grey erosion for haemorrhage)."""
    model.eval()
    error = (model(volume[None]) - volume[None]).abs().sum(dim=(0, 1)).cpu().numpy()
    filtered = (scipy.ndimage.median_filter if filter == "median" else scipy.ndimage.grey_erosion)(error, size=size)
    return torch.from_numpy(np.ascontiguousarray(filtered)).to(volume.device)
