"""Peak-memory measurement of a callable, forward only or forward+backward.

Benchmarks and reports need one number that says how much memory a kernel or
model needs, measured the same way on every device we run on:

* **CUDA** – the caching allocator already keeps the statistics we want.  We
  reset the peak counter, note ``memory_allocated`` before the call (the
  baseline: inputs, parameters, anything else alive) and report
  ``max_memory_allocated - baseline`` after a synchronize.  Numbers include the
  allocator's rounding (blocks are multiples of 512 bytes) and anything other
  threads or streams allocate on the device meanwhile.  Autograd's CUDA worker
  thread is covered because the statistics are per device, not per thread.

* **CPU and meta** – there is no allocator statistic, so :class:`StorageTracker`
  (a ``TorchDispatchMode``) follows tensor *storages* exactly.  Every aten op
  that runs on the calling thread passes through the mode; each storage of an
  op's output that is not the storage of one of the op's tensor arguments is a
  new allocation, and a ``weakref.finalize`` on the Python storage object
  reports when it is really freed.  PyTorch keeps one Python object per live
  C++ storage (PyObject preservation), so the finalizer fires when the memory
  is released, also for storages that only autograd's saved tensors keep
  alive.  On CPU and meta, autograd's backward runs on the calling thread, so
  gradients and backward temporaries are seen too.  Because meta tensors have
  storages with the same ``nbytes`` as real ones, the meta device predicts the
  CPU numbers for shapes too large to run.

What the tracker cannot see (by design, documented so nobody trusts it there):

* memory an op allocates *inside* its implementation and frees before
  returning (workspace buffers, e.g. im2col columns of a native convolution).
  Only op outputs surface in ``__torch_dispatch__``.  The project's custom ops
  allocate little besides their outputs (per-thread scratch of the coordinate
  MLP and partial sums of group_norm_silu, kilobytes to a few MB; a copy of a
  non-contiguous input), so for them the numbers are close; for aten ops they
  are a lower bound of what the real allocator does.
* tensors created from Python data outside the dispatcher (``torch.tensor``,
  ``torch.from_numpy``, ``torch.load``): they reach the mode only as an
  argument of ``aten.lift_fresh``, i.e. as if they had existed before.
* work done on other threads (autograd's CUDA/XPU worker threads, DataLoader
  workers), sparse/nested tensors and tensor subclasses without a storage.
* allocator overhead: the numbers are ``UntypedStorage.nbytes()`` sums.

Only allocations made during the measurement count; what existed before
(inputs, module parameters, buffers) is the baseline, as with CUDA.  A view,
in-place op or ``out=`` op whose result lives in an argument's storage adds
nothing, except that a storage resized by the op (``resize_``, an ``out=``
tensor that was too small) is charged for its growth.

Typical use::

    res = measure_peak(model, x, backward=True)
    print(format_bytes(res.peak_bytes), format_bytes(res.end_bytes))

    with StorageTracker() as tr:
        y = kernel(x)
    print(tr.peak_bytes, tr.live_bytes)
"""

from __future__ import annotations

import collections
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["Footprint", "PeakMemory", "StorageTracker", "measure_peak", "format_bytes"]

CUDA_ALLOCATOR = "cuda-allocator"
STORAGE_TRACKER = "storage-tracker"


@dataclass(frozen=True)
class PeakMemory:
    """Result of :func:`measure_peak`.

    ``peak_bytes``: most bytes live at once from allocations made during the call
    (what existed before is the baseline, not included).
    ``end_bytes``: bytes from those allocations still live after the call
    returned and its output was dropped (e.g. ``.grad`` of parameters).  With
    the CUDA allocator this is the net change of ``memory_allocated`` and can be
    negative if the call freed memory that existed before.
    ``device``: the device measured.
    ``method``: ``"cuda-allocator"`` or ``"storage-tracker"``.
    """

    peak_bytes: int
    end_bytes: int
    device: torch.device
    method: str


def _storage(t: torch.Tensor) -> torch.UntypedStorage | None:
    """The tensor's storage, or None for tensors without one (sparse, nested,
    wrapper subclasses): those are skipped rather than crashing the measurement."""
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def _key(st: torch.UntypedStorage) -> int:
    # The address of the C++ StorageImpl: stable while the storage lives, and
    # the identity the allocator cares about (several Tensor objects may share it).
    return st._cdata


class StorageTracker(TorchDispatchMode):
    """Exact tracker of live tensor storages allocated while the mode is active.

    ``with StorageTracker() as tr: ...`` then read ``tr.peak_bytes`` (most bytes
    live at once, measured after every op) and ``tr.live_bytes`` (bytes of
    tracked storages still alive).  ``live_bytes`` keeps decreasing after the
    block as tracked storages are freed; ``peak_bytes`` is fixed once the block
    exits.  See the module docstring for what is and is not seen.
    """

    def __init__(self) -> None:
        super().__init__()
        # key -> [charged bytes, bytes that existed before tracking began].
        # The second entry is nonzero only for pre-existing storages that an op
        # resized; we charge only their growth.
        self._tracked: dict[int, list[int]] = {}
        self._live = 0
        self._peak = 0
        # Finalizers only append here (deque.append is atomic, so any thread and
        # any moment, including a garbage collection in the middle of our own
        # bookkeeping, is safe); the frees are applied before the next count.
        self._freed: collections.deque[int] = collections.deque()

    @property
    def peak_bytes(self) -> int:
        """Most bytes live at once from storages allocated under the mode."""
        return self._peak

    @property
    def live_bytes(self) -> int:
        """Bytes of storages allocated under the mode that are still alive."""
        self._drain()
        return self._live

    def _drain(self) -> None:
        while True:
            try:
                key = self._freed.popleft()
            except IndexError:
                return
            charged, _ = self._tracked.pop(key)
            self._live -= charged

    def _track(self, st: torch.UntypedStorage, key: int, base: int) -> None:
        charged = st.nbytes() - base
        self._tracked[key] = [charged, base]
        self._live += charged
        fin = weakref.finalize(st, self._freed.append, key)
        # Storages alive at interpreter exit need no accounting.
        fin.atexit = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Sizes of argument storages before the op, to notice resizes of
        # storages that existed before the measurement.
        in_storages: dict[int, tuple[torch.UntypedStorage, int]] = {}
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor):
                st = _storage(t)
                if st is not None:
                    in_storages[_key(st)] = (st, st.nbytes())

        out = func(*args, **kwargs)

        self._drain()
        for key, (st, before) in in_storages.items():
            now = st.nbytes()
            entry = self._tracked.get(key)
            if entry is not None:
                charged = now - entry[1]
                self._live += charged - entry[0]
                entry[0] = charged
            elif now > before:
                # A storage from before the measurement grew (resize_, out=):
                # the growth is new memory.
                self._track(st, key, base=before)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = _storage(t)
                if st is None:
                    continue
                key = _key(st)
                if key in in_storages or key in self._tracked:
                    continue  # view / in-place / out= / already counted
                self._track(st, key, base=0)
        if self._live > self._peak:
            self._peak = self._live
        return out


def _tensor_devices(fn: Any, args: tuple, kwargs: dict) -> set[torch.device]:
    devices: set[torch.device] = set()
    leaves = tree_leaves((args, kwargs))
    if isinstance(fn, torch.nn.Module):
        leaves.append(fn)
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            devices.add(leaf.device)
        elif isinstance(leaf, torch.nn.Module):
            for t in leaf.parameters():
                devices.add(t.device)
            for t in leaf.buffers():
                devices.add(t.device)
    return devices


def _resolve_device(fn: Any, args: tuple, kwargs: dict, device: Any) -> torch.device:
    if device is not None:
        dev = torch.device(device)
    else:
        devices = _tensor_devices(fn, args, kwargs)
        if len(devices) > 1:
            names = ", ".join(sorted(str(d) for d in devices))
            raise ValueError(
                f"measure_peak: tensors are on mixed devices ({names}); "
                "pass device= to say which one to measure"
            )
        dev = devices.pop() if devices else torch.get_default_device()
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"measure_peak: device {dev} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type not in ("cpu", "meta"):
        raise ValueError(
            f"measure_peak: device {dev} is not supported (cuda uses the allocator "
            "statistics, cpu and meta the storage tracker)"
        )
    return dev


def _loss(out: Any) -> torch.Tensor:
    """Reduce ``fn``'s output to a scalar whose backward reaches every output
    that requires grad.  ``sum``'s backward is an expand (a view), so the
    reduction adds only a few scalars to the measurement."""
    tensors = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    if not tensors:
        raise TypeError(
            "measure_peak(backward=True): fn must return a tensor or a tuple/list of "
            f"tensors, got {type(out).__name__}"
        )
    grads = [t for t in tensors if t.requires_grad]
    if not grads:
        raise ValueError(
            "measure_peak(backward=True): no output of fn requires grad; "
            "make inputs or parameters require grad, and do not run fn under no_grad"
        )
    loss = grads[0].sum()
    for t in grads[1:]:
        loss = loss + t.sum()
    return loss


def _run(fn: Callable, args: tuple, kwargs: dict, backward: bool) -> None:
    # Everything fn returned is only referenced from this frame, so it is
    # freed when we return: end_bytes then shows what persists (gradients,
    # caches), not the output.
    out = fn(*args, **kwargs)
    if backward:
        loss = _loss(out)
        del out
        loss.backward()


def measure_peak(
    fn: Callable, *args: Any, backward: bool = False, device: Any = None, **kwargs: Any
) -> PeakMemory:
    """Call ``fn(*args, **kwargs)`` and report the peak bytes it needed.

    With ``backward=True`` the output (a tensor or a tuple/list of tensors) is
    reduced with ``.sum()`` and ``.backward()`` runs inside the measurement.
    Forward-only measurement runs in the caller's grad mode: wrap ``fn`` in
    ``torch.no_grad()`` to measure inference, otherwise tensors saved for
    backward count towards the peak, as they do in training.

    The device is inferred from the tensors among ``args``/``kwargs`` (and the
    parameters/buffers of ``fn`` or of module arguments) unless ``device`` is
    given; with no tensors the default device is used.  CUDA is measured with
    the caching allocator statistics, cpu and meta with :class:`StorageTracker`.
    The output of ``fn`` is dropped before returning.  ``backward`` and
    ``device`` are measure_peak's own keywords and are not passed to ``fn``.
    """
    if not callable(fn):
        raise TypeError(f"measure_peak: fn must be callable, got {type(fn).__name__}")
    if not isinstance(backward, bool):
        raise TypeError(f"measure_peak: backward must be a bool, got {type(backward).__name__}")
    dev = _resolve_device(fn, args, kwargs, device)

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        baseline = torch.cuda.memory_allocated(dev)
        _run(fn, args, kwargs, backward)
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - baseline
        end = torch.cuda.memory_allocated(dev) - baseline
        return PeakMemory(peak_bytes=peak, end_bytes=end, device=dev, method=CUDA_ALLOCATOR)

    with StorageTracker() as tracker:
        _run(fn, args, kwargs, backward)
        end = tracker.live_bytes
    return PeakMemory(
        peak_bytes=tracker.peak_bytes, end_bytes=end, device=dev, method=STORAGE_TRACKER
    )


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(n: int) -> str:
    """Human-readable binary size: ``512 B``, ``1.5 KiB``, ``30.5 MiB``.

    Binary units because allocator sizes are powers of two.  Negative values
    are allowed (a CUDA ``end_bytes`` can be negative).
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"format_bytes: expected an int, got {type(n).__name__}")
    sign = "-" if n < 0 else ""
    value = float(abs(n))
    if value < 1024:
        return f"{sign}{abs(n)} B"
    unit = 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    text = f"{value:.1f}"
    if text == "1024.0" and unit < len(_UNITS) - 1:
        # 1048575 B would round to "1024.0 KiB"; say "1.0 MiB" instead.
        text, unit = "1.0", unit + 1
    return f"{sign}{text} {_UNITS[unit]}"


@dataclass(frozen=True)
class Footprint:
    """One row of a memory table: the peak bytes of one implementation (``variant``) of one
    workload (``case``); ``paper_bytes`` is the figure the paper reports for that workload with its
    own implementation, where it reports one."""

    case: str
    variant: str
    peak_bytes: int
    paper_bytes: int | None = None
