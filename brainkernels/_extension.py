"""Lazy access to the compiled module ``brainkernels._C``.

Loading is deferred so ``import brainkernels`` works everywhere; a failed load is kept and
re-raised with its cause and a remedy, never swallowed.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType


@functools.cache
def _import() -> ModuleType | ImportError:
    try:
        return importlib.import_module("brainkernels._C")
    except ImportError as error:
        return error


def load() -> ModuleType:
    """Return ``brainkernels._C`` or raise an ImportError that says how to get it."""
    module = _import()
    if isinstance(module, ImportError):
        raise ImportError(
            f"brainkernels._C (the compiled C++/CUDA kernels) could not be imported: {module}. "
            "Install brainkernels from its source tree with `pip install .` (needs a C++ compiler "
            "and CMake), or use the 'reference' backend: brainkernels.use_backend('reference')."
        ) from module
    return module


def available() -> bool:
    return not isinstance(_import(), ImportError)


def load_error() -> str | None:
    module = _import()
    return str(module) if isinstance(module, ImportError) else None


def cuda_built() -> bool:
    return available() and bool(load().cuda_built)
