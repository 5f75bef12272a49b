"""The diffusion process: linear beta schedule, epsilon-prediction training, deterministic DDIM
sampling with respacing (Ho et al. 2020; Song et al. 2021; thesis eq. 5.15) and ancestral DDPM
sampling from an intermediate step with gradient guidance (Dhariwal & Nichol 2021).

Signals live in [-1, 1]: predictions of x_0 are clipped to it during sampling (guided diffusion's
``clip_denoised``). PatchDDM diffuses its mask, 0 or 1 (see ``patchddm.diffusion``); the INR's
DDM+GG baseline diffuses images mapped from [0, 1] to [-1, 1].
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


    def guided_ddpm_sample(self, predict_noise: Callable[[Tensor, Tensor], Tensor], x: Tensor, start: int, *,
                           gradient: Callable[[Tensor, Tensor], Tensor] | None = None, scale: float = 0.0,
                           stride: int = 1, generator: torch.Generator | None = None,
                           on_step: Callable[[], None] | None = None) -> Tensor:
        """Ancestral DDPM from ``x`` = x_t at timestep ``start - 1`` (a sample noised ``start``
        steps) down to x_0, visiting every ``stride``-th timestep (``start - 1``, ``start - 1 -
        stride``, ...; respaced as guided diffusion does, each step's posterior spans the skipped
        ones). With ``gradient(x_t, t)`` = grad log p(y | x_t), each step's mean is shifted by
        ``scale`` x its variance x the gradient (classifier guidance). The predicted x_0 is clipped
        to [-1, 1]; the noise comes from ``generator``."""
        if not 1 <= start <= self.steps:
            raise BrainkernelsError(f"the noising steps L must be between 1 and the {self.steps} diffusion steps the "
                                    f"model was trained with; got {start}")
        if stride < 1:
            raise BrainkernelsError(f"the sampling stride must be at least 1; got {stride}")
        timesteps = list(range(start - 1, -1, -stride))
        for index, step in enumerate(timesteps):
            t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
            abar = self.alphas_cumprod[step]
            previous = self.alphas_cumprod[timesteps[index + 1]] if index + 1 < len(timesteps) else torch.ones(())
            beta = 1 - abar / previous  # of the respaced step from `step` to the next visited one
            # q(x_prev | x_t, x_0) = N(x0_coefficient x_0 + xt_coefficient x_t, variance)
            variance = float(beta * (1 - previous) / (1 - abar))
            x0_coefficient = float(beta * previous.sqrt() / (1 - abar))
            xt_coefficient = float((1 - previous) * (1 - beta).sqrt() / (1 - abar))
            with torch.no_grad():
                epsilon = predict_noise(x, t).to(x.dtype)
            x0 = ((x - float((1 - abar).sqrt()) * epsilon) / float(abar.sqrt())).clamp(-1, 1)
            mean = x0_coefficient * x0 + xt_coefficient * x
            if variance > 0:
                if gradient is not None and scale:
                    mean = mean + scale * variance * gradient(x, t).to(x.dtype)
                noise = torch.randn(x.shape, generator=generator, device="cpu", dtype=x.dtype).to(x.device)
                x = mean + variance ** 0.5 * noise
            else:
                x = mean
            if on_step is not None:
                on_step()
        return x
