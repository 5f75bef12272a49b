"""group_norm_silu: the fused op beside the unfused PyTorch composition, time and peak bytes.

One PatchDDM block, y = SiLU(GroupNorm((h + skip) / 2 + emb) * (1 + scale) + shift), with 64
channels in 32 groups on a (1, 64, 32, 32, 32) volume ((1, 64, 64, 64, 64) with --bench-scale
full). Groups: inference (no grad), training forward (what stays alive for backward counts
towards the peak), forward + backward, each in float32, and forward + backward in bfloat16.
On CUDA the composition also runs under torch.compile (inductor). Not on CPU: there peak bytes
come from brainkernels.memory's storage tracker, a TorchDispatchMode, and compiled code does not
run under one (dynamo refuses: "non-infra torch dispatch mode present").
"""

from __future__ import annotations

import pytest
import torch

from brainkernels.ops import group_norm_silu, group_norm_silu_reference

CHANNELS, GROUPS = 64, 32
_compiled = {}


def _compiled_reference():
    if "fn" not in _compiled:
        _compiled["fn"] = torch.compile(group_norm_silu_reference, fullgraph=True, dynamic=False)
    return _compiled["fn"]


IMPLEMENTATIONS = {
    "brainkernels (fused)": (lambda: group_norm_silu, False),
    "PyTorch composition": (lambda: group_norm_silu_reference, True),
    "composition + torch.compile": (_compiled_reference, True),
}


def _inputs(side: int, dtype: torch.dtype, device: torch.device, requires_grad: bool) -> dict:
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype).requires_grad_(requires_grad)

    shape = (1, CHANNELS, side, side, side)
    return dict(h=randn(*shape), skip=randn(*shape), emb=randn(1, CHANNELS), scale=randn(1, CHANNELS),
                shift=randn(1, CHANNELS), weight=randn(CHANNELS), bias=randn(CHANNELS))


def _block(fn, t):
    return fn(t["h"], GROUPS, t["weight"], t["bias"], skip=t["skip"], emb=t["emb"], scale=t["scale"],
              shift=t["shift"])


def _case(scale: str, name: str, device: torch.device, dtype: torch.dtype, mode: str):
    if name == "composition + torch.compile" and device.type != "cuda":
        pytest.skip("compiled code cannot run under the CPU storage tracker that measures peak bytes")
    side = 64 if scale == "full" else 32
    tensors = _inputs(side, dtype, device, requires_grad=mode != "inference")
    fn = IMPLEMENTATIONS[name][0]()
    grad = torch.randn(tensors["h"].shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    leaves = list(tensors.values())

    def run():
        if mode == "inference":
            with torch.no_grad():
                return _block(fn, tensors)
        out = _block(fn, tensors)
        if mode == "forward":
            return out
        return torch.autograd.grad(out, leaves, grad)

    run()  # compile (torch.compile) and warm up outside the measurement
    info = dict(shape=list(tensors["h"].shape), groups=GROUPS, dtype=str(dtype), mode=mode,
                activation_bytes=tensors["h"].numel() * tensors["h"].element_size())
    return run, info


@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("mode", ["inference", "forward", "forward+backward"])
def test_float32(compare, device, scale, name, mode):
    run, info = _case(scale, name, device, torch.float32, mode)
    compare(f"PatchDDM block {mode}, float32, {info['shape']}", name, run, baseline=IMPLEMENTATIONS[name][1],
            **info)


@pytest.mark.parametrize("name", ["brainkernels (fused)", "PyTorch composition"])
def test_bfloat16_forward_backward(compare, device, scale, name):
    run, info = _case(scale, name, device, torch.bfloat16, "forward+backward")
    compare(f"PatchDDM block forward+backward, bfloat16, {info['shape']}", name, run,
            baseline=IMPLEMENTATIONS[name][1], **info)
