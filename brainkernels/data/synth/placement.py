"""Where findings go: a lesion is placed by drawing a voxel of the template that meets its
anatomical constraints (deep white matter, the calvaria, ...).

Placement always uses one coarse grid, whatever grid a scan is rendered on, so a cohort's ground
truth does not depend on the resolution it is written at.
"""

from __future__ import annotations

import numpy as np

from brainkernels.data.synth.anatomy import TemplateAnatomy, template_anatomy
from brainkernels.data.synth.grid import ADULT_FOV_MM, grid_axes

PLACEMENT_SHAPE = 64


def placement_anatomy() -> TemplateAnatomy:
    return template_anatomy(PLACEMENT_SHAPE, ADULT_FOV_MM)


def placement_points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y, z (MNI mm) of the voxels of the placement grid, broadcastable to (D, H, W)."""
    x, y, z = grid_axes(PLACEMENT_SHAPE, ADULT_FOV_MM)
    return x[:, None, None], y[None, :, None], z[None, None, :]


def draw_point(rng: np.random.Generator, allowed: np.ndarray, what: str) -> tuple[float, float, float]:
    """A random point (MNI mm) within a random voxel of the placement grid where ``allowed``;
    ``what`` names the finding in the error raised when no voxel is allowed."""
    candidates = np.argwhere(allowed)
    if len(candidates) == 0:
        raise RuntimeError(f"no template voxel satisfies the placement constraints of a {what}")
    voxel = candidates[int(rng.integers(len(candidates)))] + rng.uniform(-0.5, 0.5, 3)
    affine = placement_anatomy().affine
    return tuple(float(c) for c in affine[:3, :3] @ voxel + affine[:3, 3])
