"""The group_norm_silu_conv op: values and gradients against the plain composition over shapes,
dtypes and edge cases, opcheck, torch.compile, the meta device, what it saves and what the
memory tracker sees. (The module layer, GroupNormSiLUConv and its slab inference, is tested in
test_patchddm_unet.py.)"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKEND_CASES, assert_within_twice_torch_error, requires_extension
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from brainkernels import use_backend
from brainkernels.memory import StorageTracker, measure_peak
from brainkernels.ops import group_norm_silu_conv, group_norm_silu_conv_reference

# The normalisation is group_norm_silu's, which has no CUDA C++ kernel: on CUDA tensors Triton runs.
BACKEND_CASES = [case for case in BACKEND_CASES if case.values[1] in ("cpu", "triton")]
TENSORS = ("x", "skip", "emb", "norm_weight", "norm_bias", "conv_weight", "conv_bias")
OPTIONAL = ("skip", "emb", "norm_weight", "norm_bias", "conv_bias")


def make_inputs(shape, groups, out_channels, kernel, optional=OPTIONAL, dtype=torch.float64, seed=0, device="cpu"):
    """Every tensor argument (made in float64, then rounded to dtype); absent optional ones are None."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*size, scale=1.0):
        return torch.randn(*size, generator=generator, dtype=torch.float64) * scale

    batch, channels, dims = shape[0], shape[1], len(shape) - 2
    tensors = dict(x=randn(*shape), skip=randn(*shape), emb=randn(batch, channels),
                   norm_weight=1 + 0.5 * randn(channels), norm_bias=randn(channels),
                   conv_weight=randn(out_channels, channels, *[kernel] * dims, scale=0.3),
                   conv_bias=randn(out_channels))
    return {name: t.to(dtype=dtype, device=device) if name in ("x", "conv_weight") or name in optional else None
            for name, t in tensors.items()}


def run(fn, tensors, groups, grad):
    """fn's output and the gradient of every tensor given (None for absent ones)."""
    leaves = {name: None if t is None else t.detach().clone().requires_grad_() for name, t in tensors.items()}
    out = fn(leaves["x"], groups, leaves["conv_weight"], leaves["conv_bias"],
             **{name: leaves[name] for name in ("norm_weight", "norm_bias", "skip", "emb")})
    given_leaves = [t for t in leaves.values() if t is not None]
    grads = iter(torch.autograd.grad(out, given_leaves, grad.to(out.dtype)))
    return {"out": out, **{f"grad {name}": next(grads) for name, t in leaves.items() if t is not None}}


def check_against_reference(device, backend, tensors, groups, rtol=1e-9, atol=1e-9):
    """In float64: close to the composition; in other dtypes: within twice the composition's own
    error in that dtype (against the float64 composition)."""
    out_shape = (tensors["x"].shape[0], tensors["conv_weight"].shape[0], *tensors["x"].shape[2:])
    grad = torch.randn(out_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    with use_backend(backend):
        ours = run(group_norm_silu_conv, tensors, groups, grad)
    in_dtype = run(group_norm_silu_conv_reference, tensors, groups, grad)
    exact = run(group_norm_silu_conv_reference, {k: v if v is None else v.double() for k, v in tensors.items()},
                groups, grad)
    assert ours["out"].is_contiguous() and ours.keys() == exact.keys()
    for what in exact:
        assert ours[what].dtype == in_dtype[what].dtype and ours[what].shape == exact[what].shape, what
        if ours[what].dtype == torch.float64:
            torch.testing.assert_close(ours[what], exact[what], rtol=rtol, atol=atol, msg=what)
        else:
            try:
                assert_within_twice_torch_error(ours[what], in_dtype[what], exact[what])
            except AssertionError as error:
                raise AssertionError(f"{what}: {error}") from None


# name: (x's shape, groups, out_channels, kernel, optional tensors given)
CASES = {
    "3d-all": ((2, 6, 5, 4, 3), 3, 4, 3, OPTIONAL),
    "3d-bare": ((1, 4, 4, 4, 4), 2, 3, 3, ()),
    "2d-kernel-5": ((2, 4, 6, 7), 2, 2, 5, OPTIONAL),
    "1d-one-channel": ((3, 1, 9), 1, 2, 3, ("emb", "conv_bias")),
    "groups-equal-channels": ((2, 8, 3, 3, 3), 8, 3, 1, ("skip", "norm_weight")),
    "spatial-size-1": ((4, 8, 1, 1, 1), 2, 2, 3, OPTIONAL),
    "29-channels-29-groups": ((1, 29, 3, 4, 2), 29, 5, 3, OPTIONAL),
}


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_equal_reference(device, backend, dtype, case):
    shape, groups, out_channels, kernel, optional = CASES[case]
    check_against_reference(device, backend, make_inputs(shape, groups, out_channels, kernel, optional, dtype,
                                                         device=device), groups)


@pytest.mark.parametrize("device,backend", [case for case in BACKEND_CASES if case.values[1] != "triton"])
@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 3), groups=st.integers(1, 3), per_group=st.integers(1, 3), out_channels=st.integers(1, 4),
       spatial=st.lists(st.integers(1, 6), min_size=1, max_size=3), kernel=st.sampled_from([1, 3, 5]),
       optional=st.sets(st.sampled_from(OPTIONAL)), seed=st.integers(0, 2**16))
def test_property_equals_reference_in_float64(device, backend, batch, groups, per_group, out_channels, spatial, kernel,
                                              optional, seed):
    assume(batch * per_group * math.prod(spatial) > 1)  # F.group_norm refuses one value per group
    # F.group_norm's backward fails for a bias without a weight ("tensor does not have a device");
    # test_norm_bias_without_weight covers that case.
    assume("norm_weight" in optional or "norm_bias" not in optional)
    tensors = make_inputs((batch, groups * per_group, *spatial), groups, out_channels, kernel, optional, seed=seed,
                          device=device)
    check_against_reference(device, backend, tensors, groups)


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
def test_norm_bias_without_weight_is_a_weight_of_ones(device, backend):
    tensors = make_inputs((2, 4, 3, 5), 2, 3, 3, ("norm_bias",), device=device)
    grad = torch.randn(2, 3, 3, 5, dtype=torch.float64, device=device)
    with use_backend(backend):
        ours = run(group_norm_silu_conv, tensors, 2, grad)
        ones = run(group_norm_silu_conv, {**tensors, "norm_weight": torch.ones(4, dtype=torch.float64)}, 2, grad)
    for what in ours:
        torch.testing.assert_close(ours[what], ones[what], msg=what)


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
def test_empty_batch(device, backend):
    tensors = make_inputs((0, 4, 3, 3, 3), 2, 3, 3, device=device)
    with use_backend(backend):
        ours = run(group_norm_silu_conv, tensors, 2, torch.ones(0, 3, 3, 3, 3, device=device))
    assert ours["out"].shape == (0, 3, 3, 3, 3)
    for what, grad in ours.items():
        assert (grad == 0).all(), what
        assert grad.shape == (tensors[what[5:]] if what != "out" else ours["out"]).shape, what


def test_float32_parameters_with_bfloat16_activations_keep_their_dtypes():
    tensors = make_inputs((2, 4, 3, 4, 5), 2, 3, 3, dtype=torch.float32)
    tensors.update(x=tensors["x"].bfloat16(), skip=tensors["skip"].bfloat16())
    leaves = {name: t.requires_grad_() for name, t in tensors.items()}
    out = group_norm_silu_conv(leaves["x"], 2, leaves["conv_weight"], leaves["conv_bias"],
                               **{name: leaves[name] for name in ("norm_weight", "norm_bias", "skip", "emb")})
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert all(t.grad.dtype == t.dtype for t in leaves.values())
    plain = {name: t.detach().bfloat16() for name, t in tensors.items()}
    expected = group_norm_silu_conv_reference(plain["x"], 2, plain["conv_weight"], plain["conv_bias"],
                                              **{name: plain[name] for name in ("norm_weight", "norm_bias", "skip",
                                                                                "emb")})
    torch.testing.assert_close(out, expected, rtol=0.02, atol=0.02)


def test_under_autocast_the_convolution_runs_in_autocast_dtype():
    tensors = make_inputs((1, 4, 5, 6, 3), 2, 4, 3, dtype=torch.float32)
    args = (tensors["x"], 2, tensors["conv_weight"], tensors["conv_bias"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = group_norm_silu_conv(*args)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), group_norm_silu_conv_reference(*args), rtol=0.05, atol=0.05)


BAD_INPUTS = [
    ("x type", dict(x=[1.0]), TypeError, "x must be a torch.Tensor"),
    ("x dims", dict(x=torch.zeros(2, 4)), ValueError, "x must have shape"),
    ("x empty spatial", dict(x=torch.zeros(2, 4, 0)), ValueError, "x's spatial sizes must be at least 1"),
    ("x dtype", dict(x=torch.zeros(2, 4, 3, dtype=torch.int32)), TypeError, "x must be float16"),
    ("groups type", dict(num_groups=2.0), TypeError, "num_groups must be an int"),
    ("groups divisor", dict(num_groups=3), ValueError, "num_groups must be a positive divisor"),
    ("eps", dict(eps=0.0), ValueError, "eps must be a positive finite number"),
    ("conv_weight type", dict(conv_weight=None), TypeError, "conv_weight must be a torch.Tensor"),
    ("conv_weight even kernel", dict(conv_weight=torch.zeros(3, 4, 2)), ValueError, "conv_weight must have shape"),
    ("conv_weight channels", dict(conv_weight=torch.zeros(3, 2, 3)), ValueError, "conv_weight must have shape"),
    ("conv_weight dims", dict(conv_weight=torch.zeros(3, 4, 3, 3)), ValueError, "conv_weight must have shape"),
    ("conv_weight dtype", dict(conv_weight=torch.zeros(3, 4, 3, dtype=torch.int64)), TypeError,
     "conv_weight must be float16"),
    ("conv_bias shape", dict(conv_bias=torch.zeros(4)), ValueError, r"conv_bias must have shape \(out_channels,\)"),
    ("norm_weight shape", dict(norm_weight=torch.zeros(3)), ValueError, r"norm_weight must have shape \(C,\)"),
    ("norm_bias device", dict(norm_bias=torch.zeros(4, device="meta")), ValueError, "norm_bias is on meta"),
    ("skip shape", dict(skip=torch.zeros(2, 4, 4)), ValueError, "skip must have shape x's shape"),
    ("skip dtype", dict(skip=torch.zeros(2, 4, 3, dtype=torch.float64)), TypeError, "skip has dtype torch.float64"),
    ("emb type", dict(emb=3), TypeError, "emb must be a torch.Tensor or None"),
    ("emb shape", dict(emb=torch.zeros(4)), ValueError, r"emb must have shape \(N, C\)"),
]


@pytest.mark.parametrize("name,override,error,message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_names_the_argument(name, override, error, message):
    arguments = dict(x=torch.zeros(2, 4, 3), num_groups=2, conv_weight=torch.zeros(3, 4, 3))
    arguments.update(override)
    with pytest.raises(error, match=message):
        group_norm_silu_conv(**arguments)


def op_arguments(tensors, groups, dtype):
    return (*(tensors[name] for name in TENSORS), groups, 1e-5, dtype)


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("case, dtype", [("3d-all", torch.float64), ("3d-bare", torch.float64),
                                         ("2d-kernel-5", torch.float32), ("1d-one-channel", torch.bfloat16)])
def test_opcheck(device, backend, case, dtype):
    shape, groups, out_channels, kernel, optional = CASES[case]
    tensors = make_inputs(shape, groups, out_channels, kernel, optional, device=device,
                          dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    tensors = {name: None if t is None else t.requires_grad_() for name, t in tensors.items()}
    with use_backend(backend):
        # float32 tensors with a bfloat16 convolution: the autocast case.
        torch.library.opcheck(torch.ops.brainkernels.group_norm_silu_conv.default, op_arguments(tensors, groups, dtype))


@requires_extension
def test_gradcheck_float64():
    tensors = make_inputs((1, 4, 3, 2, 3), 2, 3, 3)
    leaves = [tensors[name].requires_grad_() for name in TENSORS]

    def fn(x, skip, emb, norm_weight, norm_bias, conv_weight, conv_bias):
        return group_norm_silu_conv(x, 2, conv_weight, conv_bias, norm_weight=norm_weight, norm_bias=norm_bias,
                                    skip=skip, emb=emb)

    assert torch.autograd.gradcheck(fn, leaves)


@requires_extension
def test_compiles_without_graph_breaks():
    torch._dynamo.reset()
    tensors = {name: t.float().requires_grad_() for name, t in make_inputs((2, 4, 5, 6, 3), 2, 3, 3).items()}

    def block(x, skip, emb, norm_weight, norm_bias, conv_weight, conv_bias):
        h = group_norm_silu_conv(x, 2, conv_weight, conv_bias, norm_weight=norm_weight, norm_bias=norm_bias,
                                 skip=skip, emb=emb)
        return F.avg_pool3d(h, 1) * 2

    compiled = torch.compile(block, fullgraph=True, backend="inductor")
    args = [tensors[name] for name in TENSORS]
    outputs = {}
    for name, fn in (("compiled", compiled), ("eager", block)):
        out = fn(*args)
        outputs[name] = [out, *torch.autograd.grad(out.square().sum(), args)]
    for ours, expected in zip(outputs["compiled"], outputs["eager"]):
        torch.testing.assert_close(ours, expected)


def test_meta_device_shapes_forward_and_backward():
    tensors = make_inputs((2, 6, 5, 4, 3), 3, 4, 3, dtype=torch.bfloat16, device="meta")
    leaves = {name: t.requires_grad_() for name, t in tensors.items()}
    out = group_norm_silu_conv(leaves["x"], 3, leaves["conv_weight"], leaves["conv_bias"],
                               **{name: leaves[name] for name in ("norm_weight", "norm_bias", "skip", "emb")})
    assert out.device.type == "meta" and out.shape == (2, 4, 5, 4, 3) and out.dtype == torch.bfloat16
    out.sum().backward()
    for name, t in leaves.items():
        assert t.grad is not None and t.grad.shape == t.shape and t.grad.dtype == torch.bfloat16, name


# --- memory: saves its inputs only; the tracker sees the activation it holds while it runs --------


def call(tensors, groups=4):
    return group_norm_silu_conv(tensors["x"], groups, tensors["conv_weight"], tensors["conv_bias"],
                                **{name: tensors[name] for name in ("norm_weight", "norm_bias", "skip", "emb")})


@requires_extension
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_saves_exactly_its_inputs(device):
    tensors = {name: t.float().requires_grad_() for name, t in make_inputs((2, 8, 6, 6, 6), 4, 8, 3,
                                                                            device=device).items()}
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        call(tensors)
    assert sorted(map(id, saved)) == sorted(map(id, tensors.values()))
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        group_norm_silu_conv_reference(tensors["x"], 4, tensors["conv_weight"], tensors["conv_bias"],
                                       **{name: tensors[name] for name in ("norm_weight", "norm_bias", "skip", "emb")})
    full = [t for t in saved if t.shape == tensors["x"].shape and all(t is not given for given in tensors.values())]
    assert len(full) >= 3  # the composition stores x, GroupNorm's output and the activation


@requires_extension
@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("grad", [True, False])
def test_tracker_counts_the_activation_the_op_holds_while_it_runs(device, grad):
    tensors = {name: t.float().requires_grad_(grad) for name, t in make_inputs((2, 8, 6, 6, 6), 4, 16, 3,
                                                                                device=device).items()}
    activation, out_bytes = 2 * 8 * 6**3 * 4, 2 * 16 * 6**3 * 4
    with StorageTracker() as tracker:
        out = call(tensors)
        live = tracker.live_bytes
    assert live == out_bytes and out.requires_grad == grad
    assert tracker.peak_bytes == activation + out_bytes  # as a plain composition: the activation, then its conv


@requires_extension
def test_meta_predicts_cpu_peak_of_forward_and_backward():
    peaks = []
    for device in ("cpu", "meta"):
        tensors = {name: t.float().requires_grad_() for name, t in make_inputs((2, 8, 6, 6, 6), 4, 8, 3,
                                                                                device=device).items()}
        peaks.append(measure_peak(lambda: call(tensors), backward=True).peak_bytes)
    assert peaks[0] == peaks[1]


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_flop_counter_counts_the_convolution_as_the_composition_does(device):
    tensors = {name: t.float().requires_grad_() for name, t in make_inputs((2, 8, 6, 5, 4), 4, 16, 3,
                                                                            device=device).items()}
    counts = []
    for fn in (call, lambda t: group_norm_silu_conv_reference(
            t["x"], 4, t["conv_weight"], t["conv_bias"],
            **{name: t[name] for name in ("norm_weight", "norm_bias", "skip", "emb")})):
        with FlopCounterMode(display=False) as counter:
            fn(tensors).sum().backward()
        counts.append(counter.get_flop_counts()["Global"])
    forward = 2 * (2 * 16 * 6 * 5 * 4) * (8 * 3**3)  # two per multiply-add of each output
    assert counts[0][torch.ops.brainkernels.group_norm_silu_conv] == counts[1][torch.ops.aten.convolution] == forward
    assert sum(counts[0].values()) == sum(counts[1].values()) == 3 * forward  # and the input and weight gradients
