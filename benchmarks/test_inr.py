"""The INR's unit of work for a user: fit a latent to one scan (network frozen) and decode it, as
`inr predict` does, the fused coordinate MLP beside the plain-PyTorch network.

The paper's network (WIRE, width 128, depth 8, latent 128) and its inference in 3D: 1000
latent-fitting steps of 1 % of the voxels each, then the decoded volume (paper: 5.2 minutes for a
256^3 volume on its GPU). --bench-scale full: 256^3 and 1000 steps (for a GPU); the default: 32^3
and 50 steps.
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


@pytest.mark.parametrize("name", ["brainkernels", "reference (eager)"])
def test_latent_fit_and_decode_of_a_scan(compare, device, scale, name):
    side, steps = (256, 1000) if scale == "full" else (32, 50)
    shape = (side, side, side)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoDecoder(1, fused=name == "brainkernels").to(device)
        image = torch.rand(shape)
    scan = ModelInput(image=image, foreground=image > 0.5, scale=1.0, affine=np.eye(4))
    voxels = math.ceil(0.01 * math.prod(shape))

    def run():
        latent = fit_latent(model, scan, AGE_WEEKS, steps=steps, voxels=voxels)
        return decode(model, latent, AGE_WEEKS, shape)

    compare(f"INR latent fit ({steps} steps of 1% of the voxels) + decode, {side}^3 (paper, 3D: 5.2 min at 256^3)",
            name, run, baseline=name != "brainkernels", steps=steps, voxels_per_step=voxels)
