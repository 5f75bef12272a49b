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


PAPER_DDMGG = dict(channels=160, channel_mult=(1, 1, 2, 2, 4, 4), blocks=2, regressor_channels=192,
                   regressor_channel_mult=(1, 1, 2, 2, 4, 4), regressor_blocks=2)
"""The DDM+GG baseline at the paper's size: this U-Net (no attention) and its encoder with the
paper's parameter counts, 114 M and 87 M (Table 2: 113,669,762 and 86,786,817), within 3 %."""
PAPER_SLICE = (256, 256)
BASELINE_TRAINING, BASELINE_SAMPLING = "DDM+GG training step", "DDM+GG guided sampling step"


def ddmgg_parameter_counts(settings) -> dict[str, int]:
    """Parameters of the denoiser and the regressor of a ``DDMGGConfig``."""
    from brainkernels.inr.baseline import DDMGG

    with torch.device("meta"):
        model = DDMGG(settings)
    return {name: sum(p.numel() for p in getattr(model, name).parameters()) for name in ("denoiser", "regressor")}


def ddmgg_footprints(settings, shape: tuple[int, int], batch_size: int, device: str = "meta") -> list[Footprint]:
    """Peak bytes (float32, weights and optimiser state excluded) of one training step of both
    networks on ``batch_size`` slices of ``shape``, and of one guided sampling step (the denoiser
    without gradients, the regressor's gradient with respect to x_t) on one slice."""
    from brainkernels.diffusion.process import Diffusion
    from brainkernels.inr.baseline import DDMGG, age_log_likelihood_gradient, training_loss

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DDMGG(settings).to(device)
    batch = {"target": torch.zeros(batch_size, 1, *shape, device=device),
             "condition": torch.zeros(batch_size, 1, *shape, device=device),
             "age": torch.zeros(batch_size, device=device)}
    loss = training_loss(Diffusion(settings.diffusion_steps))
    x, t = torch.zeros(1, 1, *shape, device=device), torch.full((1,), 500, device=device)
    gradient = age_log_likelihood_gradient(model, 0.5)

    def sampling_step():
        with torch.no_grad():
            model.noise(x, t, x)
        gradient(x, t)

    return [Footprint(BASELINE_TRAINING, f"batch {batch_size}, {shape[0]}x{shape[1]}",
                      measure_peak(lambda: loss(model, batch), backward=True, device=device).peak_bytes),
            Footprint(BASELINE_SAMPLING, f"{shape[0]}x{shape[1]}",
                      measure_peak(sampling_step, device=device).peak_bytes)]


def inr_2d_footprints(shape: tuple[int, int], device: str = "meta") -> list[Footprint]:
    """Peak bytes of the paper's 2D INR (fused) beside the baseline's: a training step (4 slices,
    5 % of their pixels each, as ``inr train``) and a latent-fitting step over the whole slice."""
    network = CoordinateMLP(**{**PAPER_NETWORK, "dims": 2}, device=device)
    pixels = math.ceil(0.05 * math.prod(shape))
    coords, targets = torch.zeros(4, pixels, 2, device=device), torch.zeros(4, pixels, device=device)
    latents = torch.zeros(4, 128, device=device, requires_grad=True)

    def training_step():
        return sum(F.mse_loss(network(coords[b], 0.5, latents[b]), targets[b]) for b in range(4))

    latent, image = torch.zeros(128, device=device, requires_grad=True), torch.zeros(shape, device=device)
    fitting = network.requires_grad_(False)
    peaks = [measure_peak(lambda: F.mse_loss(fitting(shape, 0.5, latent), image), backward=True, device=device)]
    network.requires_grad_(True)
    peaks.insert(0, measure_peak(training_step, backward=True, device=device))
    return [Footprint("INR training step", f"batch 4, 5 % of {shape[0]}x{shape[1]}", peaks[0].peak_bytes),
            Footprint("INR latent-fitting step", f"{shape[0]}x{shape[1]}", peaks[1].peak_bytes)]
