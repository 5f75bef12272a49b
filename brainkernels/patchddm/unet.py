"""PatchDDM's network: the 3D diffusion U-Net of :mod:`brainkernels.diffusion.unet` (the paper's
configuration is its default)."""

from brainkernels.diffusion.unet import (
    PAPER_CHANNEL_MULT,
    PAPER_CHANNELS,
    RECOMPUTE,
    DiffusionUNet,
    Recompute,
    ResidualBlock,
    timestep_embedding,
)

__all__ = ["PAPER_CHANNELS", "PAPER_CHANNEL_MULT", "RECOMPUTE", "DiffusionUNet", "Recompute", "ResidualBlock",
           "timestep_embedding"]
