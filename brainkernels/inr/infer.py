"""Inference with a trained auto-decoder: fit a latent to a scan (network frozen), then decode
that latent, or the zero or mean training latent (an "average" brain), at any age."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from brainkernels.data.layouts.dhcp import AGE_RANGE_WEEKS, PLAUSIBLE_AGE_WEEKS, normalise_age, plausible_age
from brainkernels.errors import BrainkernelsError
from brainkernels.inr.data import ModelInput
from brainkernels.inr.model import AutoDecoder, bound_norm
from brainkernels.ops.coordinate_mlp import grid_coordinates_at
from brainkernels.runtime.progress import progress

FIT_STEPS = {2: 2000, 3: 1000}
"""The paper's latent-fitting steps in 2D and 3D."""
FIT_LR = 1e-3


def require_plausible(ages: Sequence[float]) -> None:
    """Refuse an implausible age (a unit error, say); callers check before any work."""
    for age in ages:
        if not plausible_age(age):
            low, high = PLAUSIBLE_AGE_WEEKS
            raise BrainkernelsError(f"age {age:g} weeks is not a postmenstrual age (expected {low:g} to {high:g} "
                                    "weeks)")


def check_age(age_weeks: float) -> float:
    """The normalised age, with a warning when ``age_weeks`` lies outside the trained 26-45 weeks;
    an implausible age is refused."""
    require_plausible([age_weeks])
    low, high = AGE_RANGE_WEEKS
    if not low <= age_weeks <= high:
        warnings.warn(f"age {age_weeks:g} weeks lies outside the trained range {low:g}-{high:g} weeks: the "
                      "prediction is an extrapolation", stacklevel=2)
    return normalise_age(age_weeks)


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """The model's parameters without gradients inside the block (the fused op then skips the
    weights' gradients, about a fifth of a step on the whole grid), as they were after it."""
    wanted = [parameter.requires_grad for parameter in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(model.parameters(), wanted):
            parameter.requires_grad_(flag)


def fit_latent(model: AutoDecoder, scan: ModelInput, age_weeks: float, *, steps: int, voxels: int | None = None,
               lr: float = FIT_LR, quiet: bool = True) -> Tensor:
    """The latent whose decoding at ``age_weeks`` best matches ``scan`` (L2), the network frozen:
    AdamW from the zero latent, projected onto the latents' norm bound after every step.

    ``voxels`` None: every step uses the whole grid (the fused op in grid mode, memory bounded by
    its block size); a number: that many voxels drawn anew each step, for speed on a CPU (at least
    the grid's voxels: the whole grid)."""
    age = check_age(age_weeks)
    device = next(model.parameters()).device
    target = scan.image.to(device)
    if voxels is not None and voxels >= target.numel():  # a sample as large as the grid: the grid (not 10^12 draws)
        voxels = None
    latent = torch.zeros(model.latents.embedding_dim, device=device, requires_grad=True)
    optimizer = torch.optim.AdamW([latent], lr=lr)
    with _frozen(model):
        for _ in progress(range(steps), desc="fitting latent", quiet=quiet):
            optimizer.zero_grad(set_to_none=True)
            if voxels:
                chosen = torch.randint(target.numel(), (voxels,), device=device)
                coordinates = grid_coordinates_at(target.shape, chosen)
                loss = torch.mean((model.network(coordinates, age, latent) - target.reshape(-1)[chosen]) ** 2)
            else:
                loss = torch.mean((model.network(target.shape, age, latent) - target) ** 2)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                latent.copy_(bound_norm(latent, model.max_norm, model.norm_type))
    return latent.detach()


@torch.no_grad()
def decode(model: AutoDecoder, latent: Tensor, age_weeks: float, grid_shape: Sequence[int]) -> Tensor:
    """The image of ``latent`` at ``age_weeks`` on the model grid, clipped to [0, 1]."""
    return model.network(tuple(grid_shape), check_age(age_weeks), latent).clamp(0, 1)


def decode_sequence(model: AutoDecoder, latent: Tensor, ages_weeks: Sequence[float],
                    grid_shape: Sequence[int]) -> list[Tensor]:
    return [decode(model, latent, age, grid_shape) for age in ages_weeks]


def atlas_latents(model: AutoDecoder, rows: Sequence[int]) -> dict[str, Tensor]:
    """The latents of the "average" brain: zero (every latent's start) and the mean of the
    training latents in ``rows``."""
    mean = model.mean_latent(rows)
    return {"zero": torch.zeros_like(mean), "mean": mean}
