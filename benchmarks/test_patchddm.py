"""PatchDDM's U-Net: peak memory of the paper's configuration beside its peers, and CPU time.

Peers, batch 1:
- brainkernels: the U-Net with fused GroupNorm + SiLU + convolution blocks (no stored activations,
  averaged skips folded into the normalisation, slab-wise inference);
- (a) the same U-Net with unfused plain-PyTorch blocks (same parameters, same outputs);
- (b) MONAI's ``DiffusionModelUNet`` in the closest configuration (same channels per level, 2
  residual blocks, 29 groups, no attention; concatenated skips, as MONAI builds it);
- (c) (a) under ``torch.compile``: time only on CPU, where peak bytes come from the storage
  tracker (a TorchDispatchMode) that compiled code cannot run under.

Memory groups (meta device, bfloat16 weights and activations, peak bytes only; a meta "time" is
bookkeeping): a training step on a 128^3 patch, one sampling step (network evaluation) at 256^3
and a FullRes training step at 256^3 without and with recomputation (paper: 10.6, 24.0 and 78.5
GB). Time groups (CPU, float32, 29 channels, multipliers (1, 3, 4), 32^3; 64^3 with --bench-scale
full): training step and sampling step; a training step with each recompute mode, named with
the forward passes it recomputes (FLOPs counted on the meta device). With --bench-scale full on
the CPU also the paper's network at its patch size: one sampling step at 128^3, float32, beside
(a) and (c).

On a GPU with --bench-scale full, the paper's Table 1 (time and memory of one network evaluation
on an A100, batch 1): each case of the memory groups timed at its full size in bfloat16 and
float32, ours beside the unfused network (bfloat16).
"""

from __future__ import annotations

import pytest
import torch

from brainkernels.patchddm.footprint import (
    CASES,
    MONAI,
    OURS,
    PAPER_GB,
    UNFUSED,
    build_unet,
    network_step,
    recomputed_forward_passes,
)
from brainkernels.patchddm.unet import PAPER_CHANNEL_MULT, RECOMPUTE

CPU_MULT = (1, 3, 4)
_compiled = {}


def _network(name: str, channel_mult):
    if name.startswith("(b)"):
        pytest.importorskip("monai.networks.nets")
        pytest.importorskip("einops")
        return build_unet(MONAI, channel_mult)
    if name.startswith("(c)"):
        if channel_mult not in _compiled:
            _compiled[channel_mult] = torch.compile(build_unet(UNFUSED, channel_mult))
        return _compiled[channel_mult]
    return build_unet(OURS if name == "brainkernels" else UNFUSED, channel_mult)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", ["brainkernels", "(a) unfused PyTorch", "(b) MONAI DiffusionModelUNet"])
def test_memory_at_paper_scale(compare, device, case, name):
    if device.type != "cpu":
        pytest.skip("the meta-device memory groups run with --bench-device cpu (the storage tracker)")
    side, train, recompute = CASES[case]
    monai = name.startswith("(b)")
    if recompute != "none" and monai:
        pytest.skip("MONAI's DiffusionModelUNet has no recomputation")
    meta = torch.device("meta")
    network = _network(name, PAPER_CHANNEL_MULT).to(device=meta, dtype=torch.bfloat16)
    if not monai:
        network.recompute = recompute
    step = network_step(network, side, train, meta, torch.bfloat16)
    compare(f"PatchDDM {case} (meta, bf16: peak bytes only)", name, step,
            baseline=name != "brainkernels", memory_device="meta", paper_gb=PAPER_GB[case])


@pytest.mark.parametrize("train", [True, False], ids=["training step", "sampling step"])
@pytest.mark.parametrize("name", ["brainkernels", "(a) unfused PyTorch", "(b) MONAI DiffusionModelUNet",
                                  "(c) unfused + torch.compile"])
def test_time_on_a_small_volume(compare, device, scale, train, name):
    side = 64 if scale == "full" else 32
    torch.manual_seed(0)
    network = _network(name, CPU_MULT).to(device)
    label = "training step" if train else "sampling step"
    compare(f"PatchDDM {label}, {side}^3, channels 29 x {CPU_MULT}, float32", name,
            network_step(network, side, train, device, torch.float32), baseline=name != "brainkernels",
            measure_memory=not name.startswith("(c)") or device.type == "cuda")


@pytest.mark.parametrize("name", ["brainkernels", "(a) unfused PyTorch", "(c) unfused + torch.compile"])
def test_sampling_step_of_the_paper_network_on_a_cpu(compare, device, scale, name):
    if device.type != "cpu" or scale != "full":
        pytest.skip("the CPU at the paper's patch size: --bench-scale full (30-45 s per evaluation on 2 cores)")
    torch.manual_seed(0)
    network = _network(name, PAPER_CHANNEL_MULT)
    compare("PatchDDM sampling step, 128^3, paper network, float32", name,
            network_step(network, 128, False, device, torch.float32), baseline=name != "brainkernels",
            measure_memory=not name.startswith("(c)"), rounds=3)


@pytest.mark.parametrize("recompute", RECOMPUTE)
def test_training_step_with_recomputation(compare, device, scale, recompute):
    side = 64 if scale == "full" else 32
    torch.manual_seed(0)
    network = build_unet(OURS, CPU_MULT).to(device)
    network.recompute = recompute
    passes = recomputed_forward_passes(recompute, side, CPU_MULT)
    compare(f"PatchDDM training step by recompute mode, {side}^3, channels 29 x {CPU_MULT}, float32",
            f"recompute={recompute} (+{passes:.2f} forward)", network_step(network, side, True, device, torch.float32),
            baseline=recompute == "none", recomputed_forward_passes=passes)


_PAPER_SECONDS = {"training step, 128^3 patch": 0.340, "sampling step, 256^3": 1.02,
                  "FullRes training step, 256^3": 2.12, "FullRes training step, 256^3, recompute=all": 2.12}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", ["brainkernels", "(a) unfused PyTorch"])
def test_paper_table_on_a_gpu(compare, device, scale, name, case, dtype):
    if device.type != "cuda" or scale != "full":
        pytest.skip("the paper's sizes need a GPU: --bench-device cuda --bench-scale full")
    side, train, recompute = CASES[case]
    if name != "brainkernels" and dtype == torch.float32:
        pytest.skip("the unfused network runs in bfloat16 only (float32 FullRes would need ~90 GB)")
    network = _network(name, PAPER_CHANNEL_MULT).to(device=device, dtype=dtype)
    network.recompute = recompute
    compare(f"PatchDDM {case}, paper network, {str(dtype).removeprefix('torch.')} (paper, A100: "
            f"{_PAPER_SECONDS[case]} s, {PAPER_GB[case]} GB)", name, network_step(network, side, train, device, dtype),
            baseline=name != "brainkernels", paper_seconds=_PAPER_SECONDS[case])
    torch.cuda.empty_cache()
