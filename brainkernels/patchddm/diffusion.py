"""The diffusion process of PatchDDM: linear beta schedule, epsilon-prediction MSE training and
deterministic DDIM sampling with respacing (Ho et al. 2020; Song et al. 2021; thesis eq. 5.15).

The diffused signal is the segmentation mask itself, 0 (background) or 1 (tumour), as in the
paper's code; predictions of x_0 are clipped to [-1, 1] during sampling (guided diffusion's
``clip_denoised``), and a sample maps to a probability by clipping to [0, 1]. With 0 as the
background, a network that cannot yet tell anything from the MR sequences at high noise levels
falls back to "background", not to a grey 0.5 that a [-1, 1] encoding would give.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from brainkernels.errors import BrainkernelsError

STEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02


class Diffusion:
    """The forward process q(x_t | x_0) and the DDIM reverse process for ``steps`` steps."""

    def __init__(self, steps: int = STEPS, beta_start: float = BETA_START, beta_end: float = BETA_END) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1; got {steps}")
        self.steps = steps
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)

    def _coefficient(self, values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        return values.to(t.device)[t].to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))

    def sample_timesteps(self, count: int, device: torch.device | str = "cpu") -> Tensor:
        return torch.randint(0, self.steps, (count,), device=device)

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
        abar = self._coefficient(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def respaced(self, sampling_steps: int) -> list[int]:
        """The ``sampling_steps`` timesteps DDIM visits, evenly spaced over 0 ... steps - 1, descending."""
        if not 1 <= sampling_steps <= self.steps:
            raise BrainkernelsError(f"--steps must be between 1 and the {self.steps} diffusion steps the model was "
                                    f"trained with; got {sampling_steps}")
        timesteps = torch.linspace(0, self.steps - 1, sampling_steps).round().long().unique()
        return timesteps.flip(0).tolist()

    def ddim_sample(self, predict_noise: Callable[[Tensor, Tensor], Tensor], noise: Tensor, sampling_steps: int,
                    on_step: Callable[[], None] | None = None) -> Tensor:
        """Deterministic DDIM from ``noise`` = x_T; ``predict_noise(x_t, t)`` is the network with its
        condition. The predicted x_0 is clipped to [-1, 1] at every step."""
        x = noise
        timesteps = self.respaced(sampling_steps)
        for index, step in enumerate(timesteps):
            t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
            abar = self._coefficient(self.alphas_cumprod, t, x)
            epsilon = predict_noise(x, t).to(x.dtype)
            x0 = ((x - (1 - abar).sqrt() * epsilon) / abar.sqrt()).clamp(-1, 1)
            epsilon = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
            if index + 1 < len(timesteps):
                previous = self._coefficient(self.alphas_cumprod, torch.full_like(t, timesteps[index + 1]), x)
                x = previous.sqrt() * x0 + (1 - previous).sqrt() * epsilon
            else:
                x = x0
            if on_step is not None:
                on_step()
        return x


def signal_to_probability(x0: Tensor) -> Tensor:
    return x0.clamp(0, 1)
