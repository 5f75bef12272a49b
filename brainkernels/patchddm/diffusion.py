"""PatchDDM's diffused signal: the segmentation mask itself, 0 (background) or 1 (tumour), as in
the paper's code, with the shared process of :mod:`brainkernels.diffusion.process`. A sample maps
to a probability by clipping to [0, 1]. With 0 as the background, a network that cannot yet tell
anything from the MR sequences at high noise levels falls back to "background", not to a grey 0.5
that a [-1, 1] encoding would give."""

from __future__ import annotations

from torch import Tensor

from brainkernels.diffusion.process import Diffusion

__all__ = ["Diffusion", "signal_to_probability"]


def signal_to_probability(x0: Tensor) -> Tensor:
    return x0.clamp(0, 1)
