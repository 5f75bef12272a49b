"""brainkernels.ops.convolution.conv3d and nn.Conv3d: PyTorch's 3D convolution, with a single float32
CPU volume sent through oneDNN. Values and gradients against F.conv3d in float64 over shapes,
strides and paddings; which path runs; the module's state dict."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from brainkernels.nn.convolution import Conv3d
from brainkernels.ops.convolution import conv3d

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")


def kernels_run(fn) -> set[str]:
    with torch.profiler.profile() as profile:
        fn()
    return {event.name for event in profile.events() if "conv" in event.name}


def float64_reference(x, weight, bias, stride, padding):
    return F.conv3d(x.double(), weight.double(), None if bias is None else bias.double(), stride, padding)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 2), in_channels=st.integers(1, 5), out_channels=st.integers(1, 5),
       size=st.tuples(st.integers(3, 12), st.integers(3, 12), st.integers(3, 12)), kernel=st.sampled_from([1, 3, 5]),
       stride=st.integers(1, 2), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_values_and_gradients_match_pytorch(batch, in_channels, out_channels, size, kernel, stride, bias, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_channels, *size, generator=generator, requires_grad=True)
    weight = torch.randn(out_channels, in_channels, *[kernel] * 3, generator=generator, requires_grad=True)
    b = torch.randn(out_channels, generator=generator, requires_grad=True) if bias else None
    padding = kernel // 2
    leaves = [t for t in (x, weight, b) if t is not None]
    exact_leaves = [t.detach().double().requires_grad_() for t in leaves]
    out = conv3d(x, weight, b, stride, padding)
    expected = float64_reference(*exact_leaves[:2], exact_leaves[2] if bias else None, stride, padding)
    assert out.shape == expected.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    grad = torch.randn(out.shape, generator=generator)
    ours = torch.autograd.grad(out, leaves, grad)
    theirs = torch.autograd.grad(expected, exact_leaves, grad.double())
    for got, want in zip(ours, theirs):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-3)


def test_a_single_small_float32_volume_goes_through_onednn():
    x, weight = torch.randn(1, 16, 16, 16, 16), torch.randn(16, 16, 3, 3, 3)
    assert "aten::mkldnn_convolution" in kernels_run(lambda: conv3d(x, weight, padding=1))
    # the shapes PyTorch's own rule leaves to its reference path
    assert "aten::slow_conv3d_forward" in kernels_run(lambda: F.conv3d(x, weight, padding=1))


@pytest.mark.parametrize("case", ["batch of two", "float64", "1^3 kernel", "oneDNN disabled", "autocast"])
def test_other_inputs_take_pytorchs_choice(case):
    x, weight = torch.randn(1, 4, 12, 12, 12), torch.randn(4, 4, 3, 3, 3)
    if case == "batch of two":
        x = x.repeat(2, 1, 1, 1, 1)
    elif case == "float64":
        x, weight = x.double(), weight.double()
    elif case == "1^3 kernel":
        weight = weight[..., :1, :1, :1].contiguous()
    padding = weight.shape[-1] // 2
    with (torch.backends.mkldnn.flags(enabled=case != "oneDNN disabled"),
          torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast")):
        torch.testing.assert_close(conv3d(x, weight, padding=padding), F.conv3d(x, weight, padding=padding))
        if case in ("float64", "1^3 kernel", "oneDNN disabled"):
            assert "aten::mkldnn_convolution" not in kernels_run(lambda: conv3d(x, weight, padding=padding))


def test_padding_per_axis_and_non_contiguous_input():
    x = torch.randn(1, 6, 10, 14, 3).transpose(1, 4)  # (1, 3, 10, 14, 6), not contiguous
    weight = torch.randn(2, 3, 3, 3, 3)
    out = conv3d(x, weight, None, (1, 2, 1), (0, 1, 1))
    torch.testing.assert_close(out.double(), float64_reference(x, weight, None, (1, 2, 1), (0, 1, 1)),
                               rtol=1e-4, atol=1e-4)


def test_module_is_a_drop_in_conv3d():
    torch.manual_seed(0)
    plain = torch.nn.Conv3d(3, 4, 3, stride=2, padding=1)
    ours = Conv3d(3, 4, 3, stride=2, padding=1)
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 12, 12, 12)
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-5)
    assert "aten::mkldnn_convolution" in kernels_run(lambda: ours(x))
    same = Conv3d(3, 4, 3, padding="same", padding_mode="replicate")
    same.load_state_dict(torch.nn.Conv3d(3, 4, 3, padding="same", padding_mode="replicate").state_dict())
    assert same(x).shape == (1, 4, 12, 12, 12)


def test_compiled_module_matches_eager():
    module = Conv3d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 8, 8, 8)
    torch.testing.assert_close(torch.compile(module, fullgraph=True)(x), module(x), rtol=1e-5, atol=1e-5)
