"""group_norm_silu: every backend against the plain-PyTorch reference (values and gradients of
every input), the memory rule asserted exactly, the module and convert_module."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKEND_CASES, assert_within_twice_torch_error, requires_extension
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from brainkernels import _extension, use_backend
from brainkernels.memory import StorageTracker, measure_peak
from brainkernels.nn import FusedDiffusionUNetResnetBlock, GroupNormSiLU, GroupNormSiLUConv, convert_module
from brainkernels.ops import group_norm_silu, group_norm_silu_reference
from brainkernels.ops.group_norm_silu import (
    _backward_kernels,
    _CpuKernels,
    _forward_kernels,
    group_norm_silu_with_statistics,
    group_norm_statistics,
)

# This op has no CUDA C++ kernel: on CUDA tensors Triton runs.
BACKEND_CASES = [case for case in BACKEND_CASES if case.values[1] in ("cpu", "triton")]
# The Triton interpreter's sigmoid warns where exp overflows (to the right limit).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

OPTIONAL = ("skip", "emb", "scale", "shift", "affine")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]

# name: (shape, groups, optional inputs given, activation)
CASES = {
    "29ch-29groups-all": ((2, 29, 5, 7, 3), 29, OPTIONAL, "silu"),
    "6ch-3groups-plain": ((2, 6, 5, 7, 3), 3, ("affine",), "silu"),
    "6ch-3groups-skip-identity": ((2, 6, 5, 7, 3), 3, ("skip",), "none"),
    "1group-2d": ((3, 4, 6, 5), 1, ("emb", "scale", "affine"), "silu"),
    "1channel-1d": ((2, 1, 9), 1, OPTIONAL, "silu"),
    "spatial-size-1": ((3, 8, 1, 1, 1), 2, OPTIONAL, "silu"),
    "no-spatial-dims": ((3, 6), 3, ("emb", "shift"), "silu"),
    "film-only": ((1, 12, 4, 4, 4), 4, ("scale", "shift"), "silu"),
    "emb-and-skip-identity": ((2, 8, 3, 4, 5), 2, ("emb", "skip"), "none"),
    "large-mean": ((2, 4, 6, 6, 6), 2, ("skip", "emb", "affine"), "silu"),
}


def make_inputs(shape, optional, dtype, seed, device="cpu", offset=0.0):
    """h and the optional tensors (created in float64, then rounded to dtype)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*size):
        return torch.randn(*size, generator=generator, dtype=torch.float64)

    batch, channels = shape[:2]
    tensors = {"h": randn(*shape) + offset}
    if "skip" in optional:
        tensors["skip"] = randn(*shape) + offset
    if "emb" in optional:
        tensors["emb"] = randn(batch, channels)
    if "scale" in optional:
        tensors["scale"] = 0.5 * randn(batch, channels)
    if "shift" in optional:
        tensors["shift"] = randn(batch, channels)
    if "affine" in optional:
        tensors["weight"] = 1 + 0.5 * randn(channels)
        tensors["bias"] = randn(channels)
    return {name: t.to(dtype=dtype, device=device) for name, t in tensors.items()}


def run(fn, tensors, groups, activation, grad, eps=1e-5):
    """fn's output and the gradients of every tensor given."""
    leaves = {name: t.detach().clone().requires_grad_() for name, t in tensors.items()}
    out = fn(leaves["h"], groups, leaves.get("weight"), leaves.get("bias"), eps,
             **{name: leaves[name] for name in ("skip", "emb", "scale", "shift") if name in leaves},
             activation=activation)
    grads = torch.autograd.grad(out, list(leaves.values()), grad.to(out.dtype))
    return {"out": out, **{f"grad {name}": g for name, g in zip(leaves, grads)}}


def assert_close_to_exact(ours, torch_in_dtype, exact, what):
    """float64: tight; float32: at most twice PyTorch's own float32 error plus a few ulps of the
    largest value (sums over many voxels round differently); 16-bit: conftest's rule."""
    assert ours.dtype == torch_in_dtype.dtype and ours.shape == exact.shape, what
    if ours.dtype == torch.float64:
        torch.testing.assert_close(ours, exact, rtol=1e-9, atol=1e-9 * (1 + exact.abs().max().item()), msg=what)
    elif ours.dtype == torch.float32:
        our_error = (ours.double() - exact).abs().max().item()
        torch_error = (torch_in_dtype.double() - exact).abs().max().item()
        slack = 8 * torch.finfo(torch.float32).eps * exact.abs().max().item()
        assert our_error <= 2 * torch_error + slack, f"{what}: error {our_error:.3g} vs PyTorch's {torch_error:.3g}"
    else:
        try:
            assert_within_twice_torch_error(ours, torch_in_dtype, exact)
        except AssertionError as error:
            raise AssertionError(f"{what}: {error}") from None


def check_against_reference(device, backend, dtype, shape, groups, optional, activation, seed=0, offset=0.0):
    tensors = make_inputs(shape, optional, dtype, seed, device, offset)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(device)
    with use_backend(backend):
        ours = run(group_norm_silu, tensors, groups, activation, grad)
    in_dtype = run(group_norm_silu_reference, tensors, groups, activation, grad)
    exact = run(group_norm_silu_reference, {k: v.double() for k, v in tensors.items()}, groups, activation, grad)
    assert ours["out"].is_contiguous()
    for what in exact:
        assert_close_to_exact(ours[what], in_dtype[what], exact[what], what)


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_equal_reference(device, backend, dtype, case):
    shape, groups, optional, activation = CASES[case]
    offset = 300.0 if case == "large-mean" else 0.0  # |mean| >> std: no cancellation allowed
    check_against_reference(device, backend, dtype, shape, groups, optional, activation, offset=offset)


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "batch_channel_swapped", "broadcast_grad"])
def test_any_strides(device, backend, layout):
    generator = torch.Generator().manual_seed(5)
    base = torch.randn(3, 2, 6, 5, 8, generator=generator).to(device)
    h = {
        "channels_last": base.transpose(0, 1).contiguous().to(memory_format=torch.channels_last_3d),
        "sliced": base.transpose(0, 1)[:, :, ::2, 1:, ::3],
        "batch_channel_swapped": base.transpose(0, 1),
        "broadcast_grad": base.transpose(0, 1).contiguous(),
    }[layout]
    skip = torch.randn(h.shape, generator=generator).to(device).to(memory_format=torch.channels_last_3d)
    emb, scale = torch.randn(2, 3, 2, generator=generator).to(device).unbind(-1)  # strided (N, C) views
    grad = torch.ones(()).to(device).expand(h.shape) if layout == "broadcast_grad" else torch.randn(h.shape).to(device)
    tensors = dict(h=h, skip=skip, emb=emb, scale=scale)

    def both(fn):
        leaves = {name: t.detach().requires_grad_() for name, t in tensors.items()}
        # detach() keeps the strides; requires_grad_ on a view of base is fine for leaves
        out = fn(leaves["h"], 1, skip=leaves["skip"], emb=leaves["emb"], scale=leaves["scale"])
        return [out, *torch.autograd.grad(out, list(leaves.values()), grad)]

    with use_backend(backend):
        ours = both(group_norm_silu)
    for mine, theirs in zip(ours, both(group_norm_silu_reference)):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 4, 0), (2, 4, 3, 0, 2)], ids=str)
def test_empty_inputs(device, backend, shape):
    tensors = make_inputs(shape, OPTIONAL, torch.float32, 0, device)
    grad = torch.ones(shape, device=device)
    with use_backend(backend):
        ours = run(group_norm_silu, tensors, 2, "silu", grad)
    theirs = run(group_norm_silu_reference, tensors, 2, "silu", grad)
    for what in ours:
        assert ours[what].shape == theirs[what].shape, what
        assert (ours[what] == 0).all() if what != "out" else True, what


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
def test_special_values(device, backend):
    """Huge activations saturate SiLU without NaN; NaN in one group stays in that group."""
    h = torch.tensor([[[-1e4, 0.0, 1e4, 5.0], [1.0, 2.0, 3.0, 4.0]]], device=device)
    with use_backend(backend):
        out = group_norm_silu(h, 2, scale=torch.tensor([[1e4, 0.0]], device=device))
    torch.testing.assert_close(out, group_norm_silu_reference(h, 2, scale=torch.tensor([[1e4, 0.0]], device=device)))
    h[0, 0, 1] = float("nan")
    with use_backend(backend):
        out = group_norm_silu(h, 2)
    assert torch.isnan(out[0, 0]).all() and not torch.isnan(out[0, 1]).any()


PROPERTY_INPUTS = dict(
    batch=st.integers(1, 3),
    groups=st.integers(1, 4),
    per_group=st.integers(1, 4),
    spatial=st.lists(st.integers(1, 7), min_size=0, max_size=3),
    optional=st.sets(st.sampled_from(OPTIONAL)),
    activation=st.sampled_from(["silu", "none"]),
    seed=st.integers(0, 2**16),
)


def check_property(device, backend, batch, groups, per_group, spatial, optional, activation, seed):
    """Random shapes (also one value per group, no spatial dimensions) in float64: values and
    gradients of every input match the reference tightly."""
    shape = (batch, groups * per_group, *spatial)
    assume(batch * per_group * math.prod(spatial) > 1)  # F.group_norm refuses one value per group
    tensors = make_inputs(shape, optional, torch.float64, seed, device)
    grad = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).to(device)
    with use_backend(backend):
        ours = run(group_norm_silu, tensors, groups, activation, grad)
    theirs = run(group_norm_silu_reference, tensors, groups, activation, grad)
    for what in ours:
        torch.testing.assert_close(ours[what], theirs[what], rtol=1e-9, atol=1e-9, msg=what)


@pytest.mark.parametrize("device,backend", [case for case in BACKEND_CASES if case.values[1] != "triton"])
@settings(max_examples=40, deadline=None)
@given(**PROPERTY_INPUTS)
def test_property_equals_reference_in_float64(device, backend, **inputs):
    check_property(device, backend, **inputs)


# Fewer examples for Triton: the interpreter that runs it on CPUs takes seconds per example.
@pytest.mark.parametrize("device,backend", [case for case in BACKEND_CASES if case.values[1] == "triton"])
@settings(max_examples=6, deadline=None)
@given(**PROPERTY_INPUTS)
def test_property_triton_equals_reference_in_float64(device, backend, **inputs):
    check_property(device, backend, **inputs)


@requires_extension
def test_cpu_results_do_not_depend_on_thread_count():
    tensors = make_inputs((1, 4, 40, 40, 30), OPTIONAL, torch.float32, 3)  # several chunks per row
    grad = torch.randn(1, 4, 40, 40, 30, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            with use_backend("cpu"):
                results.append(run(group_norm_silu, tensors, 2, "silu", grad))
    finally:
        torch.set_num_threads(threads)
    for what in results[0]:
        assert torch.equal(results[0][what], results[1][what]) and torch.equal(results[0][what], results[2][what])


SENTINEL = 12345.0
TOLERANCES = {torch.float32: dict(rtol=1e-6, atol=1e-6), torch.bfloat16: dict(rtol=8e-3, atol=1e-5),
              torch.float16: dict(rtol=1e-3, atol=1e-5)}


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cpu_kernels_stay_inside_their_buffers(dtype):
    """Raw kernels on views inside NaN-filled buffers, writing into sentinel-guarded buffers."""
    kernels, code = _extension.load(), _extension.dtype_code(dtype)
    shape, margin = (2, 3, 37), 64
    guarded = torch.full((4, 5, 40), float("nan"), dtype=dtype)
    h = guarded[1:3, 1:4, 2:39]
    h.copy_(torch.randn(shape))
    grad = torch.randn(shape).to(dtype)
    coefficients = [torch.rand(6) + 0.5 for _ in range(6)]
    ptrs = [t.data_ptr() for t in coefficients]
    common = (code, 1, list(shape), 10, h.data_ptr(), list(h.stride()), 0, [0, 0, 0])
    out = torch.full((h.numel() + 2 * margin,), SENTINEL, dtype=dtype)
    kernels.group_norm_silu_forward_cpu(*common, *ptrs[:3], out[margin:].data_ptr(), [3 * 37, 37, 1], 2)
    # the forward into rows of a wider buffer (a slab of a padded volume) leaves the gaps alone
    rows = torch.full((2, 3, 41), SENTINEL, dtype=dtype)
    kernels.group_norm_silu_forward_cpu(*common, *ptrs[:3], rows[:, :, 2:].data_ptr(), list(rows.stride()), 2)
    grad_in = torch.full((h.numel() + 2 * margin,), SENTINEL, dtype=dtype)
    kernels.group_norm_silu_backward_input_cpu(*common, grad.data_ptr(), list(grad.stride()), *ptrs,
                                               grad_in[margin:].data_ptr(), 2)
    sums = torch.full((3 * 6 * 4 + 2 * margin,), SENTINEL)
    kernels.group_norm_silu_backward_sums_cpu(*common, grad.data_ptr(), list(grad.stride()), *ptrs[:4],
                                              sums[margin:].data_ptr(), 2)
    for buffer in (out, grad_in, sums):
        assert not torch.isnan(buffer).any()
        assert (buffer[:margin] == SENTINEL).all() and (buffer[-margin:] == SENTINEL).all()
        assert not (buffer[margin:-margin] == SENTINEL).any()
    center, alpha, beta = (t.view(2, 3, 1) for t in coefficients[:3])
    expected = F.silu((h.float() - center) * alpha + beta).flatten()
    torch.testing.assert_close(out[margin:-margin].float(), expected, **TOLERANCES[dtype])
    assert (rows[:, :, :2] == SENTINEL).all() and (rows[:, :, 39:] == SENTINEL).all()
    assert torch.equal(rows[:, :, 2:39].flatten(), out[margin:-margin])


BAD_INPUTS = [
    ("h type", dict(h=[[1.0]]), TypeError, "h must be a torch.Tensor"),
    ("h rank", dict(h=torch.zeros(4)), ValueError, r"h must have shape \(N, C, \*spatial\)"),
    ("h dtype", dict(h=torch.zeros(2, 4, 3, dtype=torch.int32)), TypeError, "h must be float16"),
    ("no channels", dict(h=torch.zeros(2, 0, 3)), ValueError, "h must have at least one channel"),
    ("groups type", dict(num_groups=2.0), TypeError, "num_groups must be an int"),
    ("groups divide", dict(num_groups=3), ValueError, "num_groups must be a positive divisor of the 4 channels"),
    ("groups zero", dict(num_groups=0), ValueError, "num_groups must be a positive divisor"),
    ("eps zero", dict(eps=0.0), ValueError, "eps must be a positive finite number"),
    ("eps negative", dict(eps=-1e-5), ValueError, "eps must be a positive finite number"),
    ("eps nan", dict(eps=float("nan")), ValueError, "eps must be a positive finite number"),
    ("activation", dict(activation="relu"), ValueError, "activation must be one of 'silu', 'none'"),
    ("skip shape", dict(skip=torch.zeros(2, 4, 4)), ValueError, r"skip must have shape h's shape"),
    ("skip type", dict(skip=1.0), TypeError, "skip must be a torch.Tensor or None"),
    ("skip dtype", dict(skip=torch.zeros(2, 4, 3, dtype=torch.float64)), TypeError, "skip has dtype torch.float64"),
    ("skip device", dict(skip=torch.zeros(2, 4, 3, device="meta")), ValueError, "skip is on meta but h is on cpu"),
    ("emb shape", dict(emb=torch.zeros(2, 4, 1)), ValueError, r"emb must have shape \(N, C\)"),
    ("emb dtype", dict(emb=torch.zeros(2, 4, dtype=torch.bfloat16)), TypeError, "emb has dtype torch.bfloat16"),
    ("scale shape", dict(scale=torch.zeros(4)), ValueError, r"scale must have shape \(N, C\)"),
    ("scale device", dict(scale=torch.zeros(2, 4, device="meta")), ValueError, "scale is on meta"),
    ("shift shape", dict(shift=torch.zeros(1, 4)), ValueError, r"shift must have shape \(N, C\)"),
    ("weight shape", dict(weight=torch.zeros(2, 4)), ValueError, r"weight must have shape \(C,\)"),
    ("bias dtype", dict(bias=torch.zeros(4, dtype=torch.float16)), TypeError, "bias has dtype torch.float16"),
]


@pytest.mark.parametrize("name,override,error,message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_names_the_argument(name, override, error, message):
    arguments = dict(h=torch.zeros(2, 4, 3), num_groups=2)
    arguments.update(override)
    with pytest.raises(error, match=message):
        group_norm_silu(**arguments)


def op_arguments(device, optional=OPTIONAL, shape=(2, 6, 3, 4, 5), dtype=torch.float64):
    tensors = make_inputs(shape, optional, dtype, 7, device)
    tensors = {name: t.requires_grad_() for name, t in tensors.items()}
    return tensors, (tensors["h"], *(tensors.get(name) for name in ("skip", "emb", "scale", "shift", "weight",
                                                                       "bias")), 3, 1e-5, "silu")


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
@pytest.mark.parametrize("optional", [OPTIONAL, ()], ids=["all-inputs", "h-only"])
def test_opcheck(device, backend, optional):
    tensors, args = op_arguments(device, optional)
    with use_backend(backend):
        torch.library.opcheck(torch.ops.brainkernels.group_norm_silu.default, args)
        _, mean, rstd = torch.ops.brainkernels.group_norm_silu(*args)
        grad = torch.randn(tensors["h"].shape, dtype=torch.float64, device=device)
        # The backward op has no autograd formula of its own (no double backward).
        detached = [t.detach() if t is not None else None for t in args[:7]]
        backward_args = (grad, *detached, mean, rstd, 3, 1e-5, "silu", True)
        torch.library.opcheck(torch.ops.brainkernels.group_norm_silu_backward.default, backward_args)


STATISTICS_BACKENDS = [*BACKEND_CASES, pytest.param(torch.device("cpu"), "reference", id="cpu-reference")]
SLAB_CASES = [name for name, case in CASES.items() if len(case[0]) > 2]


def normalise_in_slabs(tensors, groups, activation, eps=1e-5):
    """group_norm_statistics of the whole tensor, then group_norm_silu_with_statistics slab by
    slab (two planes of the first spatial axis) into a buffer with a gap plane on either side."""
    h, skip, emb = tensors["h"], tensors.get("skip"), tensors.get("emb")
    mean, rstd = group_norm_statistics(h, groups, eps, skip=skip, emb=emb)
    depth = h.shape[2]
    buffer = torch.full((*h.shape[:2], depth + 2, *h.shape[3:]), SENTINEL, dtype=h.dtype, device=h.device)
    for start in range(0, depth, 2):
        stop = min(start + 2, depth)
        written = group_norm_silu_with_statistics(
            h[:, :, start:stop], mean, rstd, tensors.get("weight"), tensors.get("bias"),
            skip=None if skip is None else skip[:, :, start:stop], emb=emb, scale=tensors.get("scale"),
            shift=tensors.get("shift"), activation=activation, out=buffer[:, :, 1 + start:1 + stop])
        assert written.data_ptr() == buffer[:, :, 1 + start].data_ptr()
    assert (buffer[:, :, 0] == SENTINEL).all() and (buffer[:, :, -1] == SENTINEL).all()
    return mean, rstd, buffer[:, :, 1:-1]


@pytest.mark.parametrize("device,backend", STATISTICS_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", SLAB_CASES)
def test_slabs_normalised_with_the_whole_statistics_equal_the_op(device, backend, dtype, case):
    shape, groups, optional, activation = CASES[case]
    offset = 300.0 if case == "large-mean" else 0.0
    tensors = make_inputs(shape, optional, dtype, 3, device, offset)
    with torch.no_grad(), use_backend(backend):
        mean, rstd, slabs = normalise_in_slabs(tensors, groups, activation)
    exact = {k: v.double() for k, v in tensors.items()}
    expected_out, expected_mean, expected_rstd = torch.ops.brainkernels.group_norm_silu(
        *op_inputs(exact), groups, 1e-5, activation)
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-5, atol=1e-5 * (1 + offset))
    torch.testing.assert_close(rstd.double(), expected_rstd, rtol=1e-4, atol=0)
    in_dtype = group_norm_silu_reference(tensors["h"], groups, tensors.get("weight"), tensors.get("bias"),
                                         **{k: tensors.get(k) for k in ("skip", "emb", "scale", "shift")},
                                         activation=activation)
    assert_close_to_exact(slabs, in_dtype, expected_out, "slabs")


def op_inputs(tensors):
    return [tensors.get(name) for name in ("h", "skip", "emb", "scale", "shift", "weight", "bias")]


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
def test_slabs_of_a_kernel_backend_equal_its_op_bit_for_bit(device, backend):
    """Same statistics, same per-voxel arithmetic: splitting the volume changes no bit."""
    shape, groups, optional, activation = CASES["29ch-29groups-all"]
    tensors = make_inputs(shape, optional, torch.float32, 4, device)
    with torch.no_grad(), use_backend(backend):
        _, _, slabs = normalise_in_slabs(tensors, groups, activation)
        whole = torch.ops.brainkernels.group_norm_silu(*op_inputs(tensors), groups, 1e-5, activation)[0]
    assert torch.equal(slabs, whole)


def test_statistics_and_normalisation_on_the_meta_device():
    h = torch.empty(2, 6, 4, 3, 5, device="meta", dtype=torch.bfloat16)
    mean, rstd = group_norm_statistics(h, 3, skip=h)
    assert mean.shape == rstd.shape == (2, 3) and mean.dtype == rstd.dtype == torch.float32
    out = torch.empty(2, 6, 6, 3, 5, device="meta", dtype=torch.bfloat16)[:, :, 1:5]
    assert group_norm_silu_with_statistics(h, mean, rstd, skip=h, out=out) is out


@pytest.mark.parametrize("device,backend", STATISTICS_BACKENDS)
@pytest.mark.parametrize("shape", [(2, 4, 0), (0, 4, 3)], ids=str)
def test_statistics_of_an_empty_tensor_are_nan(device, backend, shape):
    with use_backend(backend):
        mean, rstd = group_norm_statistics(torch.empty(shape, device=device), 2)
        out = group_norm_silu_with_statistics(torch.empty(shape, device=device), mean, rstd)
    assert mean.shape == (shape[0], 2) and mean.isnan().all() and rstd.isnan().all() and out.shape == shape


def _with_statistics(**override):
    h = torch.zeros(2, 4, 3, 5)
    arguments = dict(h=h, mean=torch.zeros(2, 2), rstd=torch.ones(2, 2))
    arguments.update(override)
    with torch.no_grad() if "grad" not in override else torch.enable_grad():
        arguments.pop("grad", None)
        group_norm_silu_with_statistics(**arguments)


WITH_STATISTICS_BAD_INPUTS = [
    ("mean type", dict(mean=[[0.0]]), TypeError, "mean must be a torch.Tensor"),
    ("mean groups", dict(mean=torch.zeros(2, 3), rstd=torch.ones(2, 3)), ValueError, r"mean must have shape \(N, G\)"),
    ("rstd batch", dict(rstd=torch.ones(1, 2)), ValueError, r"rstd must have shape \(N, G\) with N = 2"),
    ("rstd dtype", dict(rstd=torch.ones(2, 2, dtype=torch.float64)), TypeError, "rstd must be torch.float32"),
    ("out shape", dict(out=torch.zeros(2, 4, 3, 4)), ValueError, "out must have h's shape"),
    ("out rows", dict(out=torch.zeros(2, 4, 5, 3).transpose(2, 3)), ValueError, "out's spatial dimensions must be"),
    ("h dtype", dict(h=torch.zeros(2, 4, 3, 5, dtype=torch.float64)), TypeError, "mean must be torch.float64"),
    ("weight", dict(weight=torch.ones(3)), ValueError, r"weight must have shape \(C,\)"),
    ("out expanded", dict(out=torch.zeros(1, 4, 3, 5).expand(2, 4, 3, 5)), ValueError,
     "out must not be expanded along N or C"),
    ("grad", dict(h=torch.zeros(2, 4, 3, 5, requires_grad=True), grad=True), RuntimeError,
     "group_norm_silu_with_statistics is for inference"),
    ("grad of mean", dict(mean=torch.zeros(2, 2, requires_grad=True), grad=True), RuntimeError,
     "group_norm_silu_with_statistics is for inference"),
]


@pytest.mark.parametrize("name,override,error,message", WITH_STATISTICS_BAD_INPUTS,
                         ids=[case[0] for case in WITH_STATISTICS_BAD_INPUTS])
def test_bad_input_to_the_statistics_functions_names_the_argument(name, override, error, message):
    with pytest.raises(error, match=message):
        _with_statistics(**override)


def test_statistics_refuse_bad_groups_and_gradients():
    with pytest.raises(ValueError, match="num_groups must be a positive divisor"):
        group_norm_statistics(torch.zeros(2, 4, 3), 3)
    with pytest.raises(RuntimeError, match="group_norm_statistics is for inference"):
        group_norm_statistics(torch.zeros(2, 4, 3, requires_grad=True), 2)


@pytest.mark.parametrize("device,backend", BACKEND_CASES)
def test_opcheck_of_the_statistics_ops(device, backend):
    tensors = make_inputs((2, 6, 3, 4, 5), OPTIONAL, torch.float64, 7, device)
    h, skip, emb, scale, shift, weight, bias = op_inputs(tensors)
    with use_backend(backend):
        torch.library.opcheck(torch.ops.brainkernels.group_norm_statistics.default, (h, skip, emb, 3, 1e-5))
        mean, rstd = torch.ops.brainkernels.group_norm_statistics(h, skip, emb, 3, 1e-5)
        out = torch.empty_like(h)
        torch.library.opcheck(torch.ops.brainkernels.group_norm_silu_into.default,
                              (h, skip, emb, scale, shift, weight, bias, mean, rstd, "silu", out))


@requires_extension
def test_gradcheck_float64():
    tensors, args = op_arguments("cpu", shape=(2, 4, 3, 2))
    inputs = [t for t in args[:7] if t is not None]

    def fn(h, skip, emb, scale, shift, weight, bias):
        return group_norm_silu(h, 2, weight, bias, skip=skip, emb=emb, scale=scale, shift=shift)

    torch.autograd.gradcheck(fn, inputs)


class FiLMBlock(nn.Module):
    """A PatchDDM-shaped block: conv, fused norm with skip, timestep embedding and FiLM, conv."""

    def __init__(self, fused: bool = True):
        super().__init__()
        self.conv_in = nn.Conv3d(2, 8, 3, padding=1)
        self.conv_skip = nn.Conv3d(2, 8, 1)
        self.embed = nn.Linear(4, 8 * 3)
        self.norm = GroupNormSiLU(4, 8) if fused else nn.GroupNorm(4, 8)
        self.conv_out = nn.Conv3d(8, 2, 3, padding=1)
        self.fused = fused

    def forward(self, x, t):
        emb, scale, shift = self.embed(t).chunk(3, dim=1)
        h, s = self.conv_in(x), self.conv_skip(x)
        if self.fused:
            y = self.norm(h, skip=s, emb=emb, scale=scale, shift=shift)
        else:
            y = group_norm_silu_reference(h, 4, self.norm.weight, self.norm.bias, skip=s, emb=emb, scale=scale,
                                          shift=shift)
        return self.conv_out(y)


@requires_extension
def test_model_compiles_without_graph_breaks():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = FiLMBlock()
    x, t = torch.randn(2, 2, 5, 6, 7), torch.randn(2, 4)
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    eager_out = model(x, t)
    compiled_out = compiled(x, t)
    torch.testing.assert_close(compiled_out, eager_out)
    compiled_out.square().sum().backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    eager_out.square().sum().backward()
    for compiled_grad, p in zip(compiled_grads, model.parameters()):
        torch.testing.assert_close(compiled_grad, p.grad)


def test_meta_device_shapes_forward_and_backward():
    tensors, args = op_arguments("meta", dtype=torch.bfloat16)
    out = group_norm_silu(args[0], 3, tensors["weight"], tensors["bias"], skip=tensors["skip"], emb=tensors["emb"],
                          scale=tensors["scale"], shift=tensors["shift"])
    assert out.device.type == "meta" and out.shape == args[0].shape and out.dtype == torch.bfloat16
    out.sum().backward()
    for name, t in tensors.items():
        assert t.grad is not None and t.grad.shape == t.shape and t.grad.dtype == torch.bfloat16, name


# --- memory: the op keeps only its inputs and per-(sample, group) statistics ------------------


def memory_inputs(device, requires_grad=True, dtype=torch.float32):
    tensors = make_inputs((2, 8, 6, 6, 6), OPTIONAL, dtype, 0, device)
    return {name: t.requires_grad_(requires_grad) for name, t in tensors.items()}


def call(fn, tensors, groups=4):
    return fn(tensors["h"], groups, tensors["weight"], tensors["bias"], skip=tensors["skip"], emb=tensors["emb"],
              scale=tensors["scale"], shift=tensors["shift"])


def needs_kernels(device):
    if device == "cpu" and not _extension.available():
        pytest.skip("brainkernels._C not built")


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_saves_exactly_its_inputs_and_the_statistics(device):
    needs_kernels(device)
    tensors = memory_inputs(device)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        call(group_norm_silu, tensors)
    given = {id(t) for t in tensors.values()}
    extra = [t for t in saved if t is not None and id(t) not in given]
    assert len(saved) - len(extra) == len(tensors)  # every input, once
    assert [(tuple(t.shape), t.dtype) for t in extra] == [((2, 4), torch.float32)] * 2  # mean, rstd

    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        call(group_norm_silu_reference, tensors)
    full = [t for t in saved if t is not None and id(t) not in given and t.shape == tensors["h"].shape]
    assert len(full) >= 3  # the unfused composition stores x, GroupNorm's output and SiLU's input


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_forward_keeps_only_output_and_statistics_alive(device, dtype):
    needs_kernels(device)
    tensors = memory_inputs(device, dtype=dtype)
    out_bytes = tensors["h"].numel() * tensors["h"].element_size()
    stats_bytes = 2 * 2 * 4 * 4  # mean and rstd, (N, G) float32
    with StorageTracker() as tracker:
        out = call(group_norm_silu, tensors)
        live = tracker.live_bytes
    assert out.requires_grad
    assert tracker.peak_bytes == live == out_bytes + stats_bytes
    del out
    assert tracker.live_bytes == 0  # freeing the output frees the graph with the statistics
    with StorageTracker() as tracker:
        _out = call(group_norm_silu_reference, tensors)  # held: the graph it keeps alive is what is counted
        unfused_live = tracker.live_bytes
    assert unfused_live >= 4 * out_bytes  # x, GroupNorm's output, SiLU's input and the output


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_inference_saves_nothing(device):
    needs_kernels(device)
    for tensors, context in ((memory_inputs(device), torch.no_grad()),
                             (memory_inputs(device, requires_grad=False), torch.enable_grad())):
        out_bytes = tensors["h"].numel() * 4
        with context, StorageTracker() as tracker:
            out = call(group_norm_silu, tensors)
            live = tracker.live_bytes
        assert not out.requires_grad
        assert live == out_bytes  # the statistics were freed with the op's other outputs
        assert tracker.peak_bytes == out_bytes + 2 * 2 * 4 * 4


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_forward_backward_peak_is_two_tensors_for_h_alone(device):
    needs_kernels(device)
    tensors = memory_inputs(device, requires_grad=False)
    tensors["h"].requires_grad_()
    full, stats, scalar = tensors["h"].numel() * 4, 2 * 2 * 4 * 4, 4
    report = measure_peak(lambda: call(group_norm_silu, tensors), backward=True)
    # forward: output + statistics + the loss; backward (the output is gone): the statistics,
    # the loss and its gradient, h's gradient and the backward op's (N, C) and (C,) side outputs.
    side = (3 * 2 * 8 + 2 * 8) * 4
    assert report.peak_bytes == full + stats + max(scalar, 2 * scalar + side)
    assert report.end_bytes == full  # h.grad


@requires_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cpu_kernels_make_no_full_size_temporaries(dtype):
    """Inside the op (where the tracker outside cannot see): 16-bit tensors are not copied to
    float32, and nothing but the output has the size of h."""
    tensors = {name: t.detach() for name, t in make_inputs((2, 8, 16, 16, 16), OPTIONAL, dtype, 0).items()}
    args = [tensors.get(name) for name in ("h", "skip", "emb", "scale", "shift", "weight", "bias")]
    out_bytes = tensors["h"].numel() * tensors["h"].element_size()
    with StorageTracker() as tracker:
        out, mean, rstd = _forward_kernels(_CpuKernels, *args, 4, 1e-5, "silu")
    assert out_bytes < tracker.peak_bytes < out_bytes + out_bytes // 8
    grad = torch.randn(tensors["h"].shape).to(dtype)
    with StorageTracker() as tracker:
        _backward_kernels(_CpuKernels, grad, *args, mean, rstd, 4, 1e-5, "silu", True)
    assert out_bytes < tracker.peak_bytes < out_bytes + out_bytes // 8


class TinyUNet(nn.Module):
    """Two levels with averaged skips, GroupNorm + SiLU blocks in nn.Sequential."""

    def __init__(self, fused: bool):
        super().__init__()

        def block(cin, cout):
            if fused:
                return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), GroupNormSiLU(4, cout))
            return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU())

        self.down1, self.down2 = block(1, 8), block(8, 16)
        self.up2, self.up1 = block(16, 8), block(8, 8)
        self.head = nn.Conv3d(8, 1, 1)

    def forward(self, x):
        d1 = self.down1(x)
        d2 = self.down2(F.avg_pool3d(d1, 2))
        u = F.interpolate(self.up2(d2), scale_factor=2.0)
        return self.head(self.up1((u + d1) / 2))


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_fused_blocks_lower_the_training_peak_of_a_net(device):
    needs_kernels(device)
    torch.manual_seed(0)
    peaks = {}
    for fused in (False, True):
        model = TinyUNet(fused).to(device)
        x = torch.randn(2, 1, 16, 16, 16, device=device)
        peaks[fused] = measure_peak(model, x, backward=True).peak_bytes
    activation = 2 * 8 * 16**3 * 4  # one full-resolution 8-channel activation
    assert peaks[True] <= peaks[False] - 2 * activation, peaks


def test_meta_predicts_cpu_peak():
    if not _extension.available():
        pytest.skip("brainkernels._C not built")
    peaks = [measure_peak(TinyUNet(True).to(device), torch.zeros(1, 1, 8, 8, 8, device=device),
                          backward=True).peak_bytes for device in ("cpu", "meta")]
    assert peaks[0] == peaks[1]


# --- modules ----------------------------------------------------------------------------------


def test_module_matches_op_and_group_norm_state_dicts_load_both_ways():
    torch.manual_seed(1)
    norm = nn.GroupNorm(3, 6)
    nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    fused = GroupNormSiLU(3, 6)
    fused.load_state_dict(norm.state_dict())
    assert list(fused.state_dict()) == ["weight", "bias"]
    x = torch.randn(2, 6, 4, 5)
    torch.testing.assert_close(fused(x), F.silu(norm(x)))
    back = nn.GroupNorm(3, 6)
    back.load_state_dict(fused.state_dict())
    torch.testing.assert_close(back.weight, norm.weight)
    plain = GroupNormSiLU(2, 6, affine=False, activation="none")
    assert list(plain.state_dict()) == [] and "activation='none'" in repr(plain)
    torch.testing.assert_close(plain(x), F.group_norm(x, 2))
    s, emb = torch.randn(2, 6, 4, 5), torch.randn(2, 6)
    torch.testing.assert_close(fused(x, skip=s, emb=emb), group_norm_silu(x, 3, fused.weight, fused.bias, skip=s,
                                                                          emb=emb))
    with pytest.raises(ValueError, match="num_groups must be a positive divisor of num_channels"):
        GroupNormSiLU(4, 6)


def test_module_casts_float32_parameters_to_16_bit_activations():
    fused = GroupNormSiLU(2, 4)
    x = torch.randn(2, 4, 5).bfloat16()
    out = fused(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert fused.weight.grad.dtype == torch.float32


def test_convert_module_preserves_outputs_gradients_and_state_dict():
    torch.manual_seed(2)
    model = TinyUNet(fused=False)
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            nn.init.normal_(module.weight), nn.init.normal_(module.bias)
    original = copy.deepcopy(model)
    keys = list(model.state_dict())
    x = torch.randn(2, 1, 8, 8, 8)
    assert convert_module(model) is model
    assert sum(isinstance(m, GroupNormSiLU) for m in model.modules()) == 4
    assert not any(isinstance(m, (nn.GroupNorm, nn.SiLU)) for m in model.modules())
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), original(x))
    model(x).square().sum().backward()
    original(x).square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), original.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_convert_module_leaves_other_patterns_alone():
    class Subclass(nn.GroupNorm):
        pass

    model = nn.Sequential(
        nn.GroupNorm(2, 4), nn.ReLU(),  # another activation
        nn.SiLU(), nn.GroupNorm(2, 4),  # wrong order
        Subclass(2, 4), nn.SiLU(),  # a subclass may have its own forward
        nn.ModuleList([nn.GroupNorm(2, 4), nn.SiLU()]),  # not a Sequential
        nn.Sequential(nn.GroupNorm(2, 4), nn.SiLU(inplace=True)),  # nested: converted
    )
    convert_module(model)
    assert [type(m).__name__ for m in model[:6]] == ["GroupNorm", "ReLU", "SiLU", "GroupNorm", "Subclass", "SiLU"]
    assert [type(m) for m in model[6]] == [nn.GroupNorm, nn.SiLU]
    assert [type(m) for m in model[7]] == [GroupNormSiLU, nn.Identity]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised by importing monai
def test_convert_module_on_monai_diffusion_unet():
    nets = pytest.importorskip("monai.networks.nets")
    pytest.importorskip("einops")
    torch.manual_seed(3)
    model = nets.DiffusionModelUNet(spatial_dims=3, in_channels=1, out_channels=1, channels=(8, 8),
                                    attention_levels=(False, False), num_res_blocks=1, norm_num_groups=4,
                                    num_head_channels=8)
    for parameter in model.parameters():  # MONAI zero-initialises some convolutions
        nn.init.normal_(parameter, std=0.2)
    original = copy.deepcopy(model)
    keys = list(model.state_dict())
    x, timesteps = torch.randn(1, 1, 8, 8, 8), torch.tensor([10])
    convert_module(model)
    # The ResNet blocks without up/downsampling are fused, and the output head's GroupNorm + SiLU.
    assert sum(isinstance(m, FusedDiffusionUNetResnetBlock) for m in model.modules()) == 8
    assert sum(isinstance(m, GroupNormSiLU) for m in model.modules()) == 1
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(x, timesteps), original(x, timesteps))
    model(x, timesteps).square().sum().backward()
    original(x, timesteps).square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), original.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name, rtol=1e-4, atol=1e-5)


def test_convert_module_fuses_the_plain_patchddm_unet():
    from brainkernels.patchddm.unet import DiffusionUNet

    torch.manual_seed(4)
    model = DiffusionUNet(3, channels=4, channel_mult=(1, 2), groups=2, fused=False)
    for parameter in model.parameters():
        nn.init.normal_(parameter, std=0.2)
    original = copy.deepcopy(model)
    x, timesteps = torch.randn(1, 3, 4, 8, 4), torch.tensor([5])
    convert_module(model)
    assert all(module.fused for module in model.modules() if isinstance(module, GroupNormSiLUConv))
    torch.testing.assert_close(model(x, timesteps), original(x, timesteps), rtol=1e-4, atol=1e-5)
