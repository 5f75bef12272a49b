"""Module form of brainkernels.ops.extract_patches3d."""

from __future__ import annotations

from torch import Tensor, nn

from brainkernels.ops import MAX_PATCH_SIZE, extract_patches3d


class PatchExtractor3d(nn.Module):
    """Extracts ``size``^3 patches around integer centres of a (C, D, H, W) volume.

    ``forward(volume, centers)`` returns (N, C, size, size, size); see
    :func:`brainkernels.ops.extract_patches3d` for the geometry of odd and even sizes.
    """

    def __init__(self, size: int, padding_value: float = 0.0) -> None:
        super().__init__()
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_PATCH_SIZE:
            raise ValueError(f"size must be an int between 1 and {MAX_PATCH_SIZE}; got {size!r}")
        self.size = size
        self.padding_value = float(padding_value)

    def forward(self, volume: Tensor, centers: Tensor) -> Tensor:
        return extract_patches3d(volume, centers, self.size, self.padding_value)

    def extra_repr(self) -> str:
        return f"size={self.size}, padding_value={self.padding_value}"
