"""Drop-in torch.nn modules built on brainkernels ops."""

from brainkernels.nn.patches import PatchExtractor3d

__all__ = ["PatchExtractor3d"]
