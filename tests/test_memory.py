"""Tests for brainkernels.memory.

Expected byte counts are computed by hand from tensor sizes and the order in
which CPython frees temporaries; they are asserted exactly, so a tracker that
misses a free, double counts a storage or counts a view fails.
"""

import gc

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from brainkernels.memory import (
    PeakMemory,
    StorageTracker,
    format_bytes,
    measure_peak,
)

DEVICES = ["cpu", "meta"]
U8 = torch.uint8
F32 = 4  # bytes per float32


def u8(n, device):
    return torch.empty(n, dtype=U8, device=device)


# --------------------------------------------------------------------------
# StorageTracker: hand-computed sequences, on cpu and meta
# --------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_alloc_free_sequence(device):
    with StorageTracker() as tr:
        a = u8(1000, device)
        b = u8(2000, device)
        assert tr.live_bytes == 3000
        del a
        assert tr.live_bytes == 2000
        c = u8(500, device)
    assert tr.peak_bytes == 3000
    assert tr.live_bytes == 2500
    del b
    # Frees after the block still reach live_bytes; the peak stays fixed.
    assert tr.live_bytes == 500
    assert tr.peak_bytes == 3000
    del c


@pytest.mark.parametrize("device", DEVICES)
def test_float32_size(device):
    with StorageTracker() as tr:
        t = torch.empty(7, 11, 13, device=device)
    assert tr.peak_bytes == tr.live_bytes == F32 * 7 * 11 * 13
    del t


@pytest.mark.parametrize("device", DEVICES)
def test_views_inplace_and_out_not_counted(device):
    with StorageTracker() as tr:
        a = torch.zeros(10, 10, device=device)  # 400 B
        b = torch.zeros(10, 10, device=device)  # 400 B
        views = [a.t(), a.view(100), a[2:5], a[:, 1], a.unsqueeze(0).expand(3, 10, 10), a.contiguous()]
        a.add_(1)
        a.mul_(b)
        torch.add(a, 1, out=b)
        torch.mul(a, b, out=a)
        a.unbind(0)
        a.split(3)
        assert tr.live_bytes == 800
        # A copy is a new storage, even when it is transposed back to a's shape.
        copy = a.t().contiguous().t()
        assert tr.live_bytes == 1200
    assert tr.peak_bytes == 1200
    del a, b, views, copy


# A test-only op whose two outputs share one fresh storage (custom kernels may
# return a buffer and a view of it): the storage must be counted once.
_test_lib = torch.library.Library("bk_memtest", "DEF")
_test_lib.define("buffer_and_view(Tensor x) -> (Tensor, Tensor)")


def _buffer_and_view(x):
    buf = torch.empty_like(x)
    return buf, buf[1:]


_test_lib.impl("buffer_and_view", _buffer_and_view, "CompositeExplicitAutograd")


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_sharing_a_new_storage_counted_once(device):
    x = torch.zeros(100, device=device)
    with StorageTracker() as tr:
        buf, view = torch.ops.bk_memtest.buffer_and_view(x)
    assert tr.peak_bytes == tr.live_bytes == 100 * F32
    del buf
    assert tr.live_bytes == 100 * F32  # the view keeps the storage alive
    del view
    assert tr.live_bytes == 0


@pytest.mark.parametrize("device", DEVICES)
def test_views_of_preexisting_tensor_not_counted(device):
    x = torch.zeros(1000, device=device)
    with StorageTracker() as tr:
        v = x[10:20]
        w = x.view(10, 100).t()
        x.add_(1)
        x.resize_(1000)  # same size: no growth
    assert tr.peak_bytes == 0
    assert tr.live_bytes == 0
    del v, w


@pytest.mark.parametrize("device", DEVICES)
def test_resize_growth_counted(device):
    pre = u8(1000, device)
    with StorageTracker() as tr:
        pre.resize_(3000)  # pre-existing storage grows by 2000
        assert tr.live_bytes == 2000
        c = torch.empty(0, device=device)  # 0 B, tracked
        ones = torch.ones(10, device=device)  # 40 B
        torch.add(ones, 1, out=c)  # out= resizes c to 40 B
        assert tr.live_bytes == 2080
        del ones
    assert tr.peak_bytes == 2080
    assert tr.live_bytes == 2040
    del c
    assert tr.live_bytes == 2000  # the growth of `pre` is still live
    del pre
    assert tr.live_bytes == 0


@pytest.mark.parametrize("device", DEVICES)
def test_expression_temporaries(device):
    n = 1000
    x = torch.zeros(n, device=device)
    with StorageTracker() as tr:
        r = (x * 2 + 1).sum()
    # x*2 (4000) is alive while +1 allocates its result (4000): peak 8000.
    # x*2 is freed after the add, then sum allocates 4 B while x*2+1 is alive,
    # and x*2+1 is freed after sum: only r (4 B) remains.
    assert tr.peak_bytes == 2 * n * F32
    assert tr.live_bytes == F32
    del r


@pytest.mark.parametrize("device", DEVICES)
def test_autograd_saved_tensors_and_grad(device):
    n = 1000
    nb = n * F32
    x = torch.zeros(n, device=device, requires_grad=True)
    with StorageTracker() as tr:
        y = (x * 2).sin()  # sin saves x*2, which Python no longer references
        loss = y.sum()
        # Saved x*2 stays alive through the graph: x*2 + y + loss.
        assert tr.live_bytes == 2 * nb + F32
        loss.backward()
    # Backward: ones_like(loss) 4 B, expand is a view; SinBackward computes
    # cos(x*2) (nb) and grad*cos (nb) while x*2, y, loss, ones are alive:
    # 4*nb + 8.  Then x*2, cos and ones are freed; MulBackward's grad*2 (nb)
    # becomes x.grad (AccumulateGrad steals it, no copy).
    assert tr.peak_bytes == 4 * nb + 2 * F32
    assert tr.live_bytes == nb + nb + F32  # y, x.grad, loss
    assert x.grad is not None and x.grad.shape == (n,)
    del y, loss
    assert tr.live_bytes == nb  # .grad persists
    x.grad = None
    assert tr.live_bytes == 0


# --------------------------------------------------------------------------
# meta predicts CPU exactly
# --------------------------------------------------------------------------


def _conv_net():
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1),
        nn.GroupNorm(4, 8),
        nn.SiLU(),
        nn.Conv3d(8, 4, 3),
        nn.AvgPool3d(2),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5 * 5, 3),
    )


def _net_and_input(device):
    torch.manual_seed(0)
    with torch.device(device):
        net = _conv_net()
        x = torch.randn(2, 1, 12, 12, 12)
    return net, x


class _TracingTracker(StorageTracker):
    """Also records (op, live bytes) after every op, to compare whole traces."""

    def __init__(self):
        super().__init__()
        self.trace = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        self.trace.append((str(func), self.live_bytes))
        return out


def _traced(device, backward):
    net, x = _net_and_input(device)
    with _TracingTracker() as tr:
        out = net(x)
        if backward:
            out.sum().backward()
        del out
    return tr.trace, tr.peak_bytes, tr.live_bytes


@pytest.mark.parametrize("backward", [False, True])
def test_meta_matches_cpu_on_conv_net(backward):
    cpu = measure_peak(*_net_and_input("cpu"), backward=backward)
    meta = measure_peak(*_net_and_input("meta"), backward=backward)
    assert (cpu.device.type, cpu.method) == ("cpu", "storage-tracker")
    assert (meta.device.type, meta.method) == ("meta", "storage-tracker")
    assert meta.peak_bytes == cpu.peak_bytes
    assert meta.end_bytes == cpu.end_bytes
    # Not a 0 == 0 agreement: the first conv's output alone is 2*8*12^3 floats.
    assert cpu.peak_bytes > 2 * 8 * 12**3 * F32
    n_params = sum(p.numel() for p in _conv_net().parameters())
    if backward:
        assert cpu.end_bytes == n_params * F32  # the .grad of every parameter
        forward = measure_peak(*_net_and_input("cpu"))
        assert cpu.peak_bytes > forward.peak_bytes
    else:
        assert cpu.end_bytes == 0


@pytest.mark.parametrize("backward", [False, True])
def test_meta_matches_cpu_op_by_op(backward):
    cpu_trace, cpu_peak, cpu_end = _traced("cpu", backward)
    meta_trace, meta_peak, meta_end = _traced("meta", backward)
    assert meta_trace == cpu_trace
    assert (meta_peak, meta_end) == (cpu_peak, cpu_end)
    assert len(cpu_trace) >= 10


def test_no_grad_forward_is_smaller():
    net, x = _net_and_input("meta")
    with_grad = measure_peak(net, x)
    with torch.no_grad():
        without = measure_peak(net, x)
    # Without autograd, activations are freed as soon as the next layer is done.
    assert without.peak_bytes < with_grad.peak_bytes
    assert without.end_bytes == 0


# --------------------------------------------------------------------------
# Property test against a pure-Python simulation
# --------------------------------------------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, 5000)),
        st.tuples(st.just("free"), st.integers(0, 1000)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=_ops, device=st.sampled_from(DEVICES))
def test_random_alloc_free_matches_simulation(ops, device):
    held = []  # tensors, in allocation order
    sim_sizes = []
    sim_live = sim_peak = 0
    with StorageTracker() as tr:
        for op, arg in ops:
            if op == "alloc":
                held.append(u8(arg, device))
                sim_sizes.append(arg)
                sim_live += arg
                sim_peak = max(sim_peak, sim_live)
            elif held:
                i = arg % len(held)
                del held[i]
                sim_live -= sim_sizes.pop(i)
            assert tr.live_bytes == sim_live
    assert tr.peak_bytes == sim_peak
    assert tr.live_bytes == sim_live == sum(sim_sizes)
    held.clear()
    assert tr.live_bytes == 0


# --------------------------------------------------------------------------
# measure_peak
# --------------------------------------------------------------------------


def test_measure_peak_linear_forward_vs_backward():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    x = torch.randn(4, 16)
    fwd = measure_peak(lin, x)
    bwd = measure_peak(lin, x, backward=True)
    assert fwd == PeakMemory(4 * 8 * F32, 0, torch.device("cpu"), "storage-tracker")
    grad_bytes = (16 * 8 + 8) * F32
    # The output (128 B) is freed before backward (nothing saves it); then
    # loss, ones_like(loss) and both gradients are alive at once.
    assert bwd.peak_bytes == grad_bytes + 2 * F32
    assert bwd.end_bytes == grad_bytes
    assert lin.weight.grad is not None and lin.bias.grad is not None


def test_measure_peak_drops_output_and_passes_kwargs():
    def fn(n, dev):
        return u8(n, dev)

    # device= is measure_peak's own keyword; fn gets its device positionally.
    res = measure_peak(fn, 300, "meta", device="meta")
    assert (res.peak_bytes, res.end_bytes, res.device) == (300, 0, torch.device("meta"))
    # kwargs go to fn; the device is inferred from tensors among them.
    keep = []

    def g(*, like):
        keep.append(torch.empty_like(like))
        return torch.empty_like(like)

    res = measure_peak(g, like=torch.empty(10, device="meta"))
    assert res.device.type == "meta"
    assert (res.peak_bytes, res.end_bytes) == (80, 40)


def test_measure_peak_tuple_output_backward():
    a = torch.zeros(10, requires_grad=True)
    b = torch.zeros(20, requires_grad=True)

    def fn(a, b):
        return a * 1, b * 1, torch.ones(3)  # last output has no grad: ignored

    res = measure_peak(fn, a, b, backward=True)
    assert res.end_bytes == (10 + 20) * F32  # a.grad and b.grad


def test_device_inference():
    meta_net = nn.Linear(3, 3, device="meta")
    x_cpu = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"mixed devices \(cpu, meta\)"):
        measure_peak(meta_net, x_cpu)
    with pytest.raises(ValueError, match=r"cpu, meta"):
        measure_peak(lambda a, b: a, x_cpu, [torch.zeros(1, device="meta")])
    # A module passed as an argument counts too.
    with pytest.raises(ValueError, match="mixed devices"):
        measure_peak(lambda m, a: m(a), meta_net, x_cpu)
    # An explicit device overrides inference.
    res = measure_peak(lambda m, a: m(a.to("meta")), meta_net, x_cpu, device="meta")
    assert res.device == torch.device("meta")
    # No tensors at all: the default device.
    res = measure_peak(lambda: torch.empty(5))
    assert (res.device, res.peak_bytes) == (torch.device("cpu"), 20)
    with pytest.raises(ValueError, match="not supported"):
        measure_peak(lambda: None, device="xla")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_requested_without_cuda():
    with pytest.raises(ValueError, match="CUDA is not available"):
        measure_peak(lambda: None, device="cuda")


def test_bad_inputs():
    with pytest.raises(TypeError, match="callable"):
        measure_peak(42)
    with pytest.raises(TypeError, match="backward must be a bool"):
        measure_peak(lambda: None, backward="yes")
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="requires grad"):
        measure_peak(lambda t: t * 2, x, backward=True)
    with pytest.raises(ValueError, match="requires grad"):
        with torch.no_grad():
            measure_peak(lambda t: t * 2, torch.zeros(3, requires_grad=True), backward=True)
    with pytest.raises(TypeError, match="tensor"):
        measure_peak(lambda t: "not a tensor", x, backward=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_allocator_path():
    dev = torch.device("cuda")
    gc.collect()
    torch.cuda.empty_cache()
    MiB = 1 << 20
    keep = []

    def fn(x):
        a = torch.empty(MiB, dtype=U8, device=x.device)
        b = torch.empty(2 * MiB, dtype=U8, device=x.device)
        del a
        c = torch.empty(MiB // 2, dtype=U8, device=x.device)
        keep.append(b)
        return c

    x = torch.zeros(8, device=dev)
    res = measure_peak(fn, x)
    assert res.method == "cuda-allocator"
    assert res.device.type == "cuda" and res.device.index is not None
    # Sizes are multiples of 512, so the allocator numbers are exact.
    assert res.peak_bytes == 3 * MiB
    assert res.end_bytes == 2 * MiB  # b persists, c (the output) was dropped
    keep.clear()

    torch.manual_seed(0)
    lin = nn.Linear(256, 128, device=dev)
    xb = torch.randn(64, 256, device=dev)
    # Warm up: the first matmul allocates cuBLAS's workspace through the caching
    # allocator and keeps it, which would show up in end_bytes.
    lin(xb).sum().backward()
    lin.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    fwd = measure_peak(lin, xb)
    bwd = measure_peak(lin, xb, backward=True)
    assert fwd.peak_bytes >= 64 * 128 * F32
    assert fwd.end_bytes == 0
    assert bwd.end_bytes == (256 * 128 + 128) * F32  # both sizes are multiples of 512
    assert bwd.peak_bytes > bwd.end_bytes


# --------------------------------------------------------------------------
# format_bytes
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (int(30.5 * 2**20), "30.5 MiB"),
        (2**20 - 1, "1.0 MiB"),
        (3 * 2**30, "3.0 GiB"),
        (-1536, "-1.5 KiB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_format_bytes_rejects_non_int():
    with pytest.raises(TypeError):
        format_bytes(1.5)
    with pytest.raises(TypeError):
        format_bytes(True)
