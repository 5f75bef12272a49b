"""Lazy access to the compiled module ``brainkernels._C``.

Loading is deferred so ``import brainkernels`` works everywhere; a failed load is kept and
re-raised with its cause and a remedy, never swallowed.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from types import ModuleType

PACKAGE = Path(__file__).resolve().parent


@functools.cache
def _import() -> ModuleType | ImportError:
    try:
        return importlib.import_module("brainkernels._C")
    except ImportError as error:
        return error


def source_tree(package: Path) -> Path | None:
    """The source checkout whose ``brainkernels`` folder is ``package`` (pyproject.toml and csrc/
    beside it), or None for an installed package."""
    root = package.parent
    return root if (root / "pyproject.toml").is_file() and (root / "csrc").is_dir() else None


def load() -> ModuleType:
    """Return ``brainkernels._C`` or raise an ImportError that says how to get it."""
    module = _import()
    if isinstance(module, ImportError):
        raise ImportError(
            f"brainkernels._C (the compiled C++/CUDA kernels) could not be imported: {load_error()}. "
            "Install brainkernels from its source tree with `pip install .` (needs a C++ compiler "
            "and CMake), or use the 'reference' backend: brainkernels.use_backend('reference')."
        ) from module
    return module


def available() -> bool:
    return not isinstance(_import(), ImportError)


def load_error() -> str | None:
    module = _import()
    if not isinstance(module, ImportError):
        return None
    # `pip install .` then a command run in the checkout: Python imports the checkout, which has no
    # compiled module, and every op would silently run the slow reference.
    root = source_tree(PACKAGE)
    if root is not None:
        return (f"you are importing brainkernels from its source tree at {root}, which holds no compiled kernels "
                "(a `pip install .` put them in the installed package): run from another folder, or install "
                f"with `pip install -e .` to build them for the source tree ({module})")
    return str(module)


def dtype_code(dtype) -> int:
    """The compiled kernels' code for the ``torch.dtype`` ``dtype``: the one table of every op,
    ``csrc/common/dtype.h``, which the module exports as ``dtype_codes``."""
    codes = load().dtype_codes
    name = str(dtype).removeprefix("torch.")
    if name not in codes:
        raise TypeError(f"dtype must be one of {', '.join(codes)} for the compiled kernels; got {dtype}")
    return codes[name]


def cuda_built() -> bool:
    return available() and bool(load().cuda_built)
