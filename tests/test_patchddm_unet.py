"""GroupNormSiLUConv and PatchDDM's U-Net: the fused modules equal the plain PyTorch composition
(values and gradients), inference equals training-mode outputs, and the memory budgets of the
paper's configuration hold on the meta device (and meta agrees with real CPU tensors)."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from brainkernels.memory import measure_peak
from brainkernels.nn import GroupNormSiLUConv, norm_act_conv
from brainkernels.nn.norm_act_conv import group_norm_silu_conv
from brainkernels.patchddm.footprint import OURS, UNFUSED, build_unet, network_step, recomputed_forward_passes
from brainkernels.patchddm.unet import DiffusionUNet, timestep_embedding


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


def _set_fused(module: torch.nn.Module, fused: bool) -> None:
    for child in module.modules():
        if isinstance(child, GroupNormSiLUConv):
            child.fused = fused


def _outputs_and_grads(module, inputs, fused: bool, grad=None):
    _set_fused(module, fused)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad] + list(module.parameters())
    out = module(*inputs)
    grad = torch.randn_like(out) if grad is None else grad
    return out, grad, torch.autograd.grad(out, leaves, grad, allow_unused=True)


@settings(max_examples=15, deadline=None)
@given(dims=st.integers(1, 3), groups=st.sampled_from([1, 2, 4]), out_channels=st.integers(1, 5),
       size=st.integers(1, 6), batch=st.integers(1, 2), with_skip=st.booleans(), with_emb=st.booleans(),
       kernel=st.sampled_from([1, 3]))
def test_fused_block_equals_the_composition_in_float64(dims, groups, out_channels, size, batch, with_skip, with_emb,
                                                       kernel):
    shape = (batch, 4, *([size + 1] * (dims - 1)), size)
    assume(batch * (4 // groups) * math.prod(shape[2:]) > 1)  # PyTorch's GroupNorm refuses one value per group
    block = GroupNormSiLUConv(groups, 4, out_channels, kernel, dims=dims).double()
    _randomise(block)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    skip = torch.randn(shape, dtype=torch.float64, requires_grad=True) if with_skip else None
    emb = torch.randn(batch, 4, dtype=torch.float64, requires_grad=True) if with_emb else None
    fused, grad, fused_grads = _outputs_and_grads(block, (x, skip, emb), True)
    reference, _, reference_grads = _outputs_and_grads(block, (x, skip, emb), False, grad)
    torch.testing.assert_close(fused, reference)
    for ours, expected in zip(fused_grads, reference_grads):
        torch.testing.assert_close(ours, expected)


def test_fused_block_passes_gradcheck():
    block = GroupNormSiLUConv(2, 4, 3).double()
    _randomise(block)
    inputs = [torch.randn(1, 4, 3, 2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    emb = torch.randn(1, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s, e: block(x, s, e), (*inputs, emb))


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 11])
@pytest.mark.parametrize("slab_planes", [3, None])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_inference_in_slabs_and_in_one_go_equals_the_composition(monkeypatch, depth, slab_planes, dtype):
    if slab_planes is not None:  # a slab of (2, 4, slab_planes, 5, 3) activation elements
        monkeypatch.setattr(norm_act_conv, "SLAB_ELEMENTS", 2 * 4 * 5 * 3 * slab_planes)
    block = GroupNormSiLUConv(2, 4, 3).to(dtype)
    _randomise(block)
    x, skip = torch.randn(2, 4, depth, 5, 3, dtype=dtype), torch.randn(2, 4, depth, 5, 3, dtype=dtype)
    emb = torch.randn(2, 4, dtype=dtype)
    with torch.no_grad():
        fused = block(x, skip, emb)
        block.fused = False
        reference = block(x, skip, emb)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("slab_planes", [2, None])
def test_inference_casts_an_embedding_of_another_dtype_in_slabs_as_in_one_go(monkeypatch, slab_planes):
    if slab_planes is not None:
        monkeypatch.setattr(norm_act_conv, "SLAB_ELEMENTS", 2 * 4 * 5 * 3 * slab_planes)
    block = GroupNormSiLUConv(2, 4, 3)
    _randomise(block)
    x, emb = torch.randn(2, 4, 6, 5, 3), torch.randn(2, 4, dtype=torch.float64)
    with torch.no_grad():
        fused = block(x, emb=emb)
        block.fused = False
        torch.testing.assert_close(fused, block(x, emb=emb.float()), rtol=1e-5, atol=1e-5)


def test_slab_inference_names_the_bad_argument_as_the_op_does(monkeypatch):
    monkeypatch.setattr(norm_act_conv, "SLAB_ELEMENTS", 2 * 4 * 5 * 3 * 2)
    block = GroupNormSiLUConv(2, 4, 3)
    with torch.no_grad(), pytest.raises(ValueError, match=r"emb must have shape \(N, C\)"):
        block(torch.randn(2, 4, 6, 5, 3), emb=torch.randn(2, 3))
    with torch.no_grad(), pytest.raises(TypeError, match="skip has dtype torch.float64 but x has torch.float32"):
        block(torch.randn(2, 4, 6, 5, 3), torch.randn(2, 4, 6, 5, 3, dtype=torch.float64))


@pytest.mark.parametrize("affine", [dict(affine=False), dict(bias=False), dict()])
def test_slab_inference_with_and_without_norm_parameters(monkeypatch, affine):
    monkeypatch.setattr(norm_act_conv, "SLAB_ELEMENTS", 2 * 4 * 5 * 3 * 2)
    norm, conv = nn.GroupNorm(2, 4, **affine), nn.Conv3d(4, 3, 3, padding=1)
    if norm.weight is not None:
        nn.init.normal_(norm.weight)
    if norm.bias is not None:
        nn.init.normal_(norm.bias)
    x = torch.randn(2, 4, 6, 5, 3)
    with torch.no_grad():
        torch.testing.assert_close(group_norm_silu_conv(x, norm, conv), conv(F.silu(norm(x))), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", [nn.Conv3d(4, 3, 3, padding=1, stride=2), nn.Conv3d(4, 3, 3, padding=0),
                                  nn.Conv3d(4, 4, 3, padding=1, groups=2), nn.Conv3d(4, 3, 3, padding=2, dilation=2)])
def test_convolutions_that_change_the_size_are_refused(conv):
    with pytest.raises(ValueError, match="conv must be a stride-1"):
        group_norm_silu_conv(torch.randn(1, 4, 6, 6, 6), nn.GroupNorm(2, 4), conv)


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_slab_inference_of_each_kernel_size_equals_the_composition(monkeypatch, kernel):
    monkeypatch.setattr(norm_act_conv, "SLAB_ELEMENTS", 2 * 4 * 5 * 3 * 2)
    block = GroupNormSiLUConv(2, 4, 3, kernel_size=kernel).double()
    _randomise(block)
    x, skip = torch.randn(2, 4, 7, 5, 3, dtype=torch.float64), torch.randn(2, 4, 7, 5, 3, dtype=torch.float64)
    emb = torch.randn(2, 4, dtype=torch.float64)
    with torch.no_grad():
        fused = block(x, skip, emb)
        block.fused = False
        torch.testing.assert_close(fused, block(x, skip, emb))


@pytest.mark.parametrize("slab_planes", [2, None])
def test_block_in_bfloat16_is_as_accurate_as_the_composition_in_bfloat16(monkeypatch, slab_planes):
    if slab_planes is not None:
        monkeypatch.setattr(norm_act_conv, "SLAB_ELEMENTS", 8 * 6 * 6 * slab_planes)
    block = GroupNormSiLUConv(4, 8, 8)
    _randomise(block)
    x = torch.randn(1, 8, 6, 6, 6)
    exact = block.double()(x.double())
    block.bfloat16()
    with torch.no_grad():
        ours = block(x.bfloat16()).double()
        block.fused = False
        theirs = block(x.bfloat16()).double()
    assert (ours - exact).abs().max() <= 2 * (theirs - exact).abs().max() + 1e-3


def test_block_under_cpu_autocast_matches_float32():
    block = GroupNormSiLUConv(4, 8, 8)
    _randomise(block)
    x = torch.randn(1, 8, 5, 6, 7, requires_grad=True)
    expected = block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)
    skip, emb = torch.randn(x.shape), torch.randn(1, 8)
    expected_with_skip = block(x, skip, emb)
    for slab_planes in (None, 2):  # inference too runs in the autocast dtype, in one go and in slabs
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), pytest.MonkeyPatch.context() as patch:
            if slab_planes is not None:
                patch.setattr(norm_act_conv, "SLAB_ELEMENTS", 8 * 6 * 7 * slab_planes)
            inferred, inferred_with_skip = block(x), block(x, skip, emb)
        assert inferred.dtype == inferred_with_skip.dtype == torch.bfloat16
        torch.testing.assert_close(inferred.float(), expected, rtol=0.05, atol=0.05)
        torch.testing.assert_close(inferred_with_skip.float(), expected_with_skip, rtol=0.05, atol=0.05)
    out.float().sum().backward()
    assert block.conv.weight.grad.dtype == torch.float32 and x.grad.shape == x.shape


def test_block_rejects_even_kernels_and_bad_dims():
    with pytest.raises(ValueError, match="kernel_size"):
        GroupNormSiLUConv(1, 4, 4, 2)
    with pytest.raises(ValueError, match="dims"):
        GroupNormSiLUConv(1, 4, 4, dims=4)


def _small_unet(**options) -> DiffusionUNet:
    unet = DiffusionUNet(5, channels=4, channel_mult=(1, 2, 2), groups=2, **options).double()
    _randomise(unet, seed=1)
    return unet


def test_unet_fused_equals_unfused_values_and_gradients():
    unet = _small_unet()
    x = torch.randn(2, 5, 8, 4, 12, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 999])
    fused, grad, fused_grads = _outputs_and_grads(unet, (x, t), True)
    reference, _, reference_grads = _outputs_and_grads(unet, (x, t), False, grad)
    torch.testing.assert_close(fused, reference)
    for ours, expected in zip(fused_grads, reference_grads):
        torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("recompute", ["blocks", "all"])
def test_unet_recomputation_gives_the_same_values_and_gradients(recompute, fused):
    unet = _small_unet(fused=fused)
    x = torch.randn(2, 5, 8, 4, 12, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([3, 500])
    stored, grad, stored_grads = _outputs_and_grads(unet, (x, t), fused)
    unet.recompute = recompute
    recomputed, _, recomputed_grads = _outputs_and_grads(unet, (x, t), fused, grad)
    torch.testing.assert_close(recomputed, stored)
    for ours, expected in zip(recomputed_grads, stored_grads):
        torch.testing.assert_close(ours, expected)


def test_unet_recomputation_keeps_autocast():
    unet = DiffusionUNet(5, channels=4, channel_mult=(1, 2), groups=2)
    _randomise(unet, seed=2)
    x, t = torch.randn(1, 5, 8, 8, 8), torch.tensor([10])
    grads = {}
    for recompute in ("none", "all"):
        unet.recompute = recompute
        unet.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = unet(x, t)
        out.float().square().mean().backward()
        grads[recompute] = [p.grad.clone() for p in unet.parameters()]
    assert out.dtype == torch.bfloat16
    for ours, expected in zip(grads["all"], grads["none"]):
        torch.testing.assert_close(ours, expected)


def test_unet_refuses_an_unknown_recompute_mode():
    with pytest.raises(ValueError, match="recompute must be one of none, blocks, all"):
        DiffusionUNet(5, channels=4, channel_mult=(1, 2), groups=2, recompute="top")


def test_unet_inference_path_equals_the_training_path():
    unet = _small_unet()
    x, t = torch.randn(1, 5, 12, 8, 4, dtype=torch.float64), torch.tensor([17])
    with torch.no_grad():
        inference = unet(x.clone(), t)
    torch.testing.assert_close(inference, unet(x, t).detach())


def test_unet_rejects_sizes_it_cannot_halve():
    unet = _small_unet()
    with pytest.raises(ValueError, match="multiples of 4"):
        unet(torch.zeros(1, 5, 8, 8, 6, dtype=torch.float64), torch.tensor([1]))


def test_unet_output_starts_at_zero_and_parameters_match_the_paper_layout():
    unet = DiffusionUNet(8)
    assert unet.size_multiple == 64
    x = torch.randn(1, 8, 64, 64, 64)
    with torch.no_grad():
        assert unet(x, torch.tensor([3])).abs().max() == 0  # zero-initialised head, as guided diffusion
    assert timestep_embedding(torch.tensor([0.0]), 29).shape == (1, 29)


def _peak(unet, side, grad, device="meta", dtype=torch.bfloat16, channels=8):
    x = torch.zeros(1, channels, side, side, side, device=device, dtype=dtype)
    t = torch.zeros(1, device=device, dtype=torch.long)
    if grad:
        return measure_peak(lambda: unet(x, t), backward=True).peak_bytes
    with torch.no_grad():
        return measure_peak(lambda: unet(x, t)).peak_bytes


@pytest.fixture(scope="module")
def paper_unets():
    return {fused: DiffusionUNet(8, fused=fused).to(device="meta", dtype=torch.bfloat16) for fused in (True, False)}


@pytest.mark.parametrize("case, side, grad, budget", [
    ("training step on a 128^3 patch", 128, True, 3e9),
    ("sampling step at 256^3", 256, False, 6e9),
    ("FullRes training step at 256^3", 256, True, 24e9),
])
def test_paper_configuration_fits_the_memory_budgets(paper_unets, case, side, grad, budget):
    fused, unfused = _peak(paper_unets[True], side, grad), _peak(paper_unets[False], side, grad)
    assert fused <= budget, f"{case}: {fused / 1e9:.2f} GB > {budget / 1e9:.0f} GB"
    assert fused < unfused


def test_sampling_at_256_in_float32_fits_12_gb():
    unet = DiffusionUNet(8).to(device="meta", dtype=torch.float32)
    peak = _peak(unet, 256, False, dtype=torch.float32)
    assert peak <= 12e9, f"sampling step at 256^3 in float32: {peak / 1e9:.2f} GB > 12 GB"


def test_fullres_training_with_recomputation_fits_a_12_gb_gpu():
    unet = DiffusionUNet(8).to(device="meta", dtype=torch.bfloat16)
    peaks = {}
    for recompute in ("none", "blocks", "all"):
        unet.recompute = recompute
        peaks[recompute] = _peak(unet, 256, True)
    assert peaks["all"] <= 12e9, f"FullRes training at 256^3 with recompute=all: {peaks['all'] / 1e9:.2f} GB > 12 GB"
    assert peaks["all"] < peaks["blocks"] < peaks["none"]


def test_recomputed_forward_passes_count_the_fused_convolutions():
    # The fused blocks' convolutions run inside a custom op; counted like the unfused network's,
    # "blocks" recomputes most of a forward pass and "all" more.
    passes = {mode: recomputed_forward_passes(mode, 16, (1, 2)) for mode in ("none", "blocks", "all")}
    assert passes["none"] == 0 and 0.5 < passes["blocks"] < passes["all"] < 2
    flops = []
    for variant in (OURS, UNFUSED):
        with FlopCounterMode(display=False) as counter:
            network_step(build_unet(variant, (1, 2)).to("meta"), 16, False, torch.device("meta"), torch.float32)()
        flops.append(counter.get_total_flops())
    assert flops[0] == flops[1]


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_meta_device_peak_equals_real_cpu_tensors(fused, grad):
    unet = DiffusionUNet(8, channels=4, channel_mult=(1, 2), groups=2, fused=fused)
    real = _peak(unet, 8, grad, device="cpu", dtype=torch.float32)
    meta = _peak(unet.to("meta"), 8, grad, device="meta", dtype=torch.float32)
    # The CPU backward kernels allocate a few small per-thread partial sums the meta kernels do not.
    assert meta == pytest.approx(real, rel=0.03)
