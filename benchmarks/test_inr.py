"""The INR's unit of work for a user: fit a latent to one scan (network frozen) and decode it, as
`inr predict` does, the fused coordinate MLP beside the plain-PyTorch network.

The paper's network (WIRE, width 128, depth 8, latent 128) and its inference in 3D: 1000
latent-fitting steps of 1 % of the voxels each, then the decoded volume (paper: 5.2 minutes for a
256^3 volume on its GPU). --bench-scale full: 256^3 and 1000 steps; the default: 32^3 and 50
steps. On a CPU at full scale the fit and the decoding are timed apart, the fit on 10 of its 1000
steps and the decoding on a quarter of the grid (every step and every voxel does the same work),
so a round takes a minute, not an hour.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from brainkernels.inr.data import ModelInput
from brainkernels.inr.infer import decode, fit_latent
from brainkernels.inr.model import AutoDecoder

AGE_WEEKS = 40.0


NAMES = ["brainkernels", "reference (eager)"]
PAPER_STEPS = 1000
CPU_TIMED_STEPS = 10
CPU_DECODED_GRID = (64, 256, 256)


def _model_and_scan(name: str, side: int, device: torch.device) -> tuple[AutoDecoder, ModelInput, int]:
    """The paper's network (random weights), a random scan of ``side``^3 and 1 % of its voxels."""
    shape = (side, side, side)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoDecoder(1, fused=name == "brainkernels").to(device)
        image = torch.rand(shape)
    scan = ModelInput(image=image, foreground=image > 0.5, scale=1.0, affine=np.eye(4))
    return model, scan, math.ceil(0.01 * math.prod(shape))


@pytest.mark.parametrize("name", NAMES)
def test_latent_fit_and_decode_of_a_scan(compare, device, scale, name):
    if device.type == "cpu" and scale == "full":
        pytest.skip("on a CPU at full scale: test_latent_fit_and_decode_of_a_256_cube_on_a_cpu")
    side, steps = (256, PAPER_STEPS) if scale == "full" else (32, 50)
    shape = (side, side, side)
    model, scan, voxels = _model_and_scan(name, side, device)

    def run():
        latent = fit_latent(model, scan, AGE_WEEKS, steps=steps, voxels=voxels)
        return decode(model, latent, AGE_WEEKS, shape)

    compare(f"INR latent fit ({steps} steps of 1% of the voxels) + decode, {side}^3 (paper, 3D: 5.2 min at 256^3)",
            name, run, baseline=name != "brainkernels", steps=steps, voxels_per_step=voxels)


@pytest.mark.parametrize("part", ["latent fit", "decode"])
@pytest.mark.parametrize("name", NAMES)
def test_latent_fit_and_decode_of_a_256_cube_on_a_cpu(compare, device, scale, name, part):
    if device.type != "cpu" or scale != "full":
        pytest.skip("the CPU at the paper's size: --bench-device cpu --bench-scale full")
    model, scan, voxels = _model_and_scan(name, 256, device)
    if part == "decode":
        latent = torch.zeros(model.latents.embedding_dim)
        block_size = None if name == "brainkernels" else voxels  # the paper's micro-batches of 1 %

        @torch.no_grad()
        def run():
            return model.network(CPU_DECODED_GRID, AGE_WEEKS, latent, block_size=block_size).clamp(0, 1)

        compare("INR decode of 256^3 (the reference in micro-batches of 1%)", name, run,
                baseline=name != "brainkernels", extrapolate=256**3 / math.prod(CPU_DECODED_GRID), rounds=3)
        return
    compare(f"INR latent fit, {PAPER_STEPS} steps of 1% of 256^3", name,
            lambda: fit_latent(model, scan, AGE_WEEKS, steps=CPU_TIMED_STEPS, voxels=voxels),
            baseline=name != "brainkernels", extrapolate=PAPER_STEPS / CPU_TIMED_STEPS, rounds=3,
            voxels_per_step=voxels)
