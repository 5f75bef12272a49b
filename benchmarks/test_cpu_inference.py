"""CPU inference paths beside main's path in one run.

- PPR dense anomaly map (m=16, 31^3 patches): main's path (contiguous layout, float32) beside the
  channels-last pass in float32 and in bfloat16 (autocast; fast where the CPU has AVX512-BF16 or
  AMX). Default scale: a 32^3 volume in one tile of 32; ``--bench-scale full``: a 64x128x128 slab
  in tiles of 64 (1/16 of a 256^3 scan, the time scaled up to the whole scan).
- GroupNorm + SiLU with one channel per group (the paper's 29 channels in 29 groups), inference
  on (1, 29, 64, 64, 64) (128^3 at full scale): the fused kernel with each instruction set this
  CPU runs beside PyTorch's group_norm + silu.

The INR's instruction-set paths are in test_coordinate_mlp.py ("brainkernels (avx2)" etc.), beside
the eager and compiled reference network.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from brainkernels import backends
from brainkernels.ops import group_norm_silu
from brainkernels.ppr.infer import native_bfloat16, predict_dense
from brainkernels.ppr.model import PPRNet

PPR_PATHS = {
    "main (contiguous, float32)": dict(layout="contiguous", precision="float32"),
    "channels-last, float32": dict(layout="channels_last", precision="float32"),
    "channels-last, bfloat16": dict(layout="channels_last", precision="bfloat16"),
}
SCAN = 256**3


@pytest.mark.parametrize("path", list(PPR_PATHS))
def test_ppr_dense_anomaly_map(compare, device, scale, path):
    if device.type != "cpu":
        pytest.skip("the CPU paths (--bench-device cpu)")
    if PPR_PATHS[path]["precision"] == "bfloat16" and not native_bfloat16():
        pytest.skip("this CPU emulates bfloat16 (no AVX512-BF16 or AMX), so precision='auto' never runs it here")
    shape, tile = ((64, 128, 128), 64) if scale == "full" else ((32, 32, 32), 32)
    torch.manual_seed(0)
    model = PPRNet(m=16).eval()
    volume = torch.rand(1, *shape)
    extrapolate = SCAN / math.prod(shape) if scale == "full" else 1.0
    group = "PPR dense map, m=16, patch 31: " + (f"256^3 scan (timed on {shape}, tile {tile})" if scale == "full"
                                                 else f"{shape[0]}^3, tile {tile}")
    compare(group, path, lambda: predict_dense(model, volume, tile=tile, **PPR_PATHS[path]),
            baseline=path.startswith("main"), extrapolate=extrapolate,
            native_bfloat16=native_bfloat16())


@pytest.mark.parametrize("name", [f"brainkernels ({isa})" for isa in backends.CPU_ISAS] + ["PyTorch group_norm + silu"])
def test_group_norm_silu_one_channel_per_group(compare, device, scale, name):
    if device.type != "cpu":
        pytest.skip("the CPU paths (--bench-device cpu)")
    side = 128 if scale == "full" else 64
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 29, side, side, side, generator=generator)
    weight, bias = torch.randn(29, generator=generator), torch.randn(29, generator=generator)
    if name.startswith("PyTorch"):
        def run():
            with torch.no_grad():
                return F.silu(F.group_norm(x, 29, weight, bias))
    else:
        isa = name[name.index("(") + 1:-1]
        if not backends.cpu_isa_runs(isa):
            pytest.skip(f"this CPU cannot run {isa}")

        def run():
            with torch.no_grad(), backends.use_cpu_isa(isa):
                return group_norm_silu(x, 29, weight, bias)
    compare(f"GroupNorm + SiLU inference, 29 channels / 29 groups, {side}^3, fp32", name, run,
            baseline=name.startswith("PyTorch"))
