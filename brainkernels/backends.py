"""Which implementation of an op runs: chosen per device, forced by a context manager or
by the ``BRAINKERNELS_BACKEND`` environment variable.

Default per device: CPU tensors use the C++/OpenMP kernels, CUDA tensors the CUDA kernels
(Triton when the extension was built without CUDA). When neither can run, the plain-PyTorch
reference runs instead, with a warning; a forced backend that cannot run raises.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
import warnings
from collections.abc import Iterator

import torch

from brainkernels import _extension

BACKENDS = ("cpu", "cuda", "triton", "reference")
ENV_VAR = "BRAINKERNELS_BACKEND"
# The instruction sets the C++ kernels are compiled for, chosen at run time (widest first).
CPU_ISAS = ("avx512", "avx2", "baseline")
CPU_ISA_ENV_VAR = "BRAINKERNELS_CPU_ISA"

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("brainkernels_backend", default=None)


def _check_name(name: object, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source}: unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return name  # type: ignore[return-value]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every brainkernels op inside the block with backend ``name``."""
    token = _forced.set(_check_name(name, "use_backend(name)"))
    try:
        yield
    finally:
        _forced.reset(token)


def forced_backend() -> tuple[str, str] | None:
    """The forced backend and what forced it, or None when the device decides."""
    name = _forced.get()
    if name is not None:
        return name, "use_backend()"
    name = os.environ.get(ENV_VAR, "").strip()
    if name:
        return _check_name(name, f"environment variable {ENV_VAR}"), f"{ENV_VAR}={name}"
    return None


def cpu_isa() -> str:
    """The instruction set the CPU kernels run with: forced (``use_cpu_isa``, BRAINKERNELS_CPU_ISA)
    or the widest this CPU has."""
    return _extension.load().cpu_isa_active()


def cpu_isa_runs(name: str) -> bool:
    """Whether this CPU runs the kernels compiled for instruction set ``name``."""
    best = _extension.load().cpu_isa_best()
    return CPU_ISAS.index(name) >= CPU_ISAS.index(best)


@contextlib.contextmanager
def use_cpu_isa(name: str) -> Iterator[None]:
    """Run the CPU kernels inside the block with instruction set ``name`` (to test every path on
    one machine); a ValueError when this CPU cannot run it. Not thread-local: it sets the process."""
    if name not in CPU_ISAS:
        raise ValueError(f"use_cpu_isa(name): unknown instruction set {name!r}; expected one of {', '.join(CPU_ISAS)}")
    kernels = _extension.load()
    previous = kernels.cpu_isa_active() if kernels.cpu_isa_is_forced() else ""
    kernels.cpu_isa_force(name)
    try:
        yield
    finally:
        kernels.cpu_isa_force(previous)


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on ``device``, or None when it can."""
    if backend == "reference":
        return None
    if backend == "triton":
        if not triton_installed():
            return "triton is not installed (pip install 'brainkernels[triton]')"
        if device.type == "cpu" and not triton_interpreted():
            return "Triton runs CPU tensors only under TRITON_INTERPRET=1 (set before triton is imported)"
        if device.type not in ("cpu", "cuda"):
            return f"Triton does not run on {device.type} tensors"
        return None
    if backend != device.type:
        return f"the {backend} kernels do not run on {device.type} tensors"
    if not _extension.available():
        return f"brainkernels._C could not be imported: {_extension.load_error()}"
    if backend == "cuda" and not _extension.cuda_built():
        return "brainkernels._C was built without CUDA (rebuild with nvcc on PATH and BRAINKERNELS_CUDA=on)"
    return None


@functools.cache
def _warn_fallback(device_type: str, reason: str) -> None:
    warnings.warn(
        f"brainkernels: no compiled kernel for {device_type} tensors ({reason}); "
        "running the plain-PyTorch reference, which is slower and uses more memory",
        RuntimeWarning,
        stacklevel=3,
    )


def resolve(device: torch.device, supported: tuple[str, ...] = BACKENDS) -> str:
    """The backend an op with implementations ``supported`` runs on ``device``."""
    forced = forced_backend()
    if forced is not None:
        name, source = forced
        reason = "this op has no such backend" if name not in supported else unavailable_reason(name, device)
        if reason is not None:
            raise RuntimeError(f"backend {name!r} was forced ({source}) but cannot run on {device}: {reason}")
        return name
    preferred = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}.get(device.type, ())
    reasons = []
    for name in preferred:
        reason = "this op has no such backend" if name not in supported else unavailable_reason(name, device)
        if reason is None:
            return name
        reasons.append(f"{name}: {reason}")
    if preferred:
        _warn_fallback(device.type, "; ".join(reasons))
    return "reference"
