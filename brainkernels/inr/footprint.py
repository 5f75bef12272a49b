"""Peak memory of the paper's INR network over a whole 256^3 volume, on the meta device: the
fused coordinate MLP beside the plain-PyTorch network as the paper's code runs it (coordinates
expanded and concatenated with the latent, activations stored by autograd) in micro-batches of
1 % of the volume (the paper's ``micro_batch_ratio``).

Every micro-batch frees all it made but its output slice (and the latent's gradient), so the
peak of a whole pass is the peak of any micro-batch: the reference runs three (first, middle,
last) to keep the measurement short.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from brainkernels.memory import Footprint, measure_peak
from brainkernels.nn import CoordinateMLP, ReferenceCoordinateMLP
from brainkernels.ops.coordinate_mlp import grid_coordinates

PAPER_NETWORK = dict(dims=3, latent_size=128, width=128, depth=8, activation="wire", omega=10.0, scale=10.0,
                     residual=True)
VOLUME = (256, 256, 256)
MICRO_BATCH = math.ceil(math.prod(VOLUME) * 0.01)
OURS, REFERENCE = "brainkernels", "reference (micro-batches of 1%)"
EVALUATION, FITTING = "evaluate 256^3", "latent-fitting step over 256^3"
PAPER_INFERENCE_MB = 10286  # Table 2 of the paper: 3D inference (latent fitting), GPU memory


def paper_pair(device: torch.device | str) -> tuple[CoordinateMLP, ReferenceCoordinateMLP, torch.Tensor]:
    """The fused module and the reference with the same weights, and a small latent."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        fused = CoordinateMLP(**PAPER_NETWORK, device=device)
        latent = 0.1 * torch.randn(128, device=device)
    reference = ReferenceCoordinateMLP(**PAPER_NETWORK, device=device)
    reference.load_state_dict(fused.state_dict())
    return fused, reference, latent


def _micro_batch_starts(count: int) -> list[int]:
    last = (count - 1) // MICRO_BATCH * MICRO_BATCH
    return sorted({0, last // 2 // MICRO_BATCH * MICRO_BATCH, last})


def evaluation(variant: str) -> Callable[[], torch.Tensor]:
    """Decode the whole volume once (no gradients)."""
    fused, reference, latent = paper_pair("meta")
    count = math.prod(VOLUME)

    @torch.no_grad()
    def run():
        if variant == OURS:
            return fused(VOLUME, 0.5, latent)
        coords = grid_coordinates(VOLUME, device="meta")
        out = torch.empty(count, device="meta")
        for start in _micro_batch_starts(count):
            out[start:start + MICRO_BATCH] = reference(coords[start:start + MICRO_BATCH], 0.5, latent)
        return out.view(VOLUME)
    return run


def latent_fitting_step(variant: str) -> Callable[[], None]:
    """One step of fitting a latent to a whole volume (network fixed): loss and its gradient."""
    fused, reference, latent = paper_pair("meta")
    network = fused if variant == OURS else reference
    network.requires_grad_(False)
    latent = latent.clone().requires_grad_()
    target = torch.empty(VOLUME, device="meta")
    count = math.prod(VOLUME)

    def run():
        latent.grad = None
        if variant == OURS:
            F.mse_loss(fused(VOLUME, 0.5, latent), target).backward()
            return
        coords, flat_target = grid_coordinates(VOLUME, device="meta"), target.flatten()
        for start in _micro_batch_starts(count):  # the latent's gradient accumulates over micro-batches
            out = reference(coords[start:start + MICRO_BATCH], 0.5, latent)
            (F.mse_loss(out, flat_target[start:start + MICRO_BATCH], reduction="sum") / count).backward()
    return run


def paper_scale_footprints() -> list[Footprint]:
    rows = [Footprint(EVALUATION, variant, measure_peak(evaluation(variant), device="meta").peak_bytes)
            for variant in (OURS, REFERENCE)]
    rows += [Footprint(FITTING, variant, measure_peak(latent_fitting_step(variant), device="meta").peak_bytes,
                       PAPER_INFERENCE_MB * 10**6 if variant == OURS else None) for variant in (OURS, REFERENCE)]
    return rows
