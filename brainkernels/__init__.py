"""brainkernels: memory-efficient deep learning for 3D brain MRI and CT.

Importing the package compiles and loads nothing: the compiled kernels (``brainkernels._C``)
and Triton are loaded the first time an op needs them.
"""

from brainkernels.backends import use_backend

__version__ = "0.1.0"
__all__ = ["__version__", "use_backend"]
