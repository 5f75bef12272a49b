"""Segmentation by DDIM sampling: an ensemble of masks from different initial noises, their mean
(the segmentation, thresholded at 0.5) and variance (the uncertainty)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from brainkernels.diffusion.unet import DiffusionUNet
from brainkernels.errors import BrainkernelsError
from brainkernels.patchddm.data import PreparedSubject, network_input
from brainkernels.patchddm.diffusion import Diffusion, signal_to_probability
from brainkernels.patchddm.train import PatchDDMConfig


@dataclass(frozen=True)
class Segmentation:
    """Per-member probabilities (K, D, H, W) on the subject's original grid, their mean and variance."""

    members: Tensor

    def mean(self, size: int | None = None) -> Tensor:
        return self.members[:size].mean(dim=0)

    def variance(self, size: int | None = None) -> Tensor:
        return self.members[:size].var(dim=0, correction=0)

    def mask(self, size: int | None = None) -> Tensor:
        return self.mean(size) > 0.5


def sample_members(model: DiffusionUNet, settings: PatchDDMConfig, prepared: PreparedSubject, *, steps: int,
                   ensemble: int, seed: int = 0, on_step=None) -> Segmentation:
    """``ensemble`` DDIM samples with ``steps`` steps each, member k from noise seeded ``seed + k``.
    The network runs in its parameters' dtype (``model.bfloat16()`` halves the sampling memory)."""
    if ensemble < 1:
        raise BrainkernelsError(f"--ensemble must be at least 1; got {ensemble}")
    diffusion = Diffusion(settings.diffusion_steps)
    diffusion.respaced(steps)  # checks steps before any work
    parameter = next(model.parameters())
    condition = network_input(prepared.image, settings.mode)[None].to(parameter.device, parameter.dtype)

    def predict_noise(x: Tensor, t: Tensor) -> Tensor:
        # the network may run in 16 bits; the DDIM updates stay in float32
        return model(torch.cat([x.to(condition.dtype), condition], dim=1), t)

    members = []
    with torch.no_grad():
        for member in range(ensemble):
            generator = torch.Generator().manual_seed(seed + member)
            noise = torch.randn((1, 1, *condition.shape[2:]), generator=generator).to(condition.device)
            probability = signal_to_probability(diffusion.ddim_sample(predict_noise, noise, steps, on_step))
            if settings.mode == "half":
                probability = F.interpolate(probability, scale_factor=2, mode="trilinear", align_corners=False)
            members.append(probability[0, 0][prepared.crop].float().cpu())
    return Segmentation(torch.stack(members))
