"""Smooth random fields, the raw material of subjects and lesions.

Both kinds are defined in millimetres, not voxels, so a subject or a lesion looks the same
rendered on a 64^3 or a 256^3 grid:

- cosine fields: a few low-frequency cosines over a fixed box around the head, weighted by
  coefficients that a subject stores (deformations, bias fields);
- lattice noise: Gaussian-smoothed white noise on a lattice whose spacing is the correlation
  length, fixed by a seed (texture, irregular lesion outlines).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from brainkernels.data.synth.grid import HEAD_CENTRE_MM, sample_channels

FIELD_BOX_MM = 320.0
"""Side of the cube around the head centre on which cosine fields and lattice noise are defined;
it holds the largest field of view sampled (a preterm head, magnified to template size)."""


def rotation_matrix(degrees: Sequence[float]) -> np.ndarray:
    """Rotation by angles about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def cosine_field(coefficients: np.ndarray, axes_mm: Sequence[np.ndarray]) -> np.ndarray:
    """Sum over (i, j, k) of ``coefficients[..., i, j, k] * cos(pi i u) cos(pi j v) cos(pi k w)``
    on the grid spanned by the 1D coordinates ``axes_mm`` (x, y, z), with u, v, w the positions
    scaled to [0, 1] across the field box; shape ``coefficients.shape[:-3] + grid shape``.

    Separable, so it costs a few small matrix products rather than one cosine per voxel and term.
    """
    coefficients = np.asarray(coefficients, dtype=np.float32)
    frequencies = np.arange(coefficients.shape[-1], dtype=np.float32) * np.float32(math.pi)
    x, y, z = (
        np.cos(((axis[:, None] - np.float32(centre)) / np.float32(FIELD_BOX_MM) + np.float32(0.5)) * frequencies)
        for axis, centre in zip(axes_mm, HEAD_CENTRE_MM)
    )
    return np.einsum("...ijk,xi,yj,zk->...xyz", coefficients, x, y, z, optimize=True)


def lattice_noise(seed: int, correlation_mm: float, points_mm: np.ndarray) -> np.ndarray:
    """Smooth Gaussian noise with unit variance and correlation length ``correlation_mm``,
    sampled at world points (..., 3); the same seed gives the same field in millimetres."""
    if not correlation_mm > 0:
        raise ValueError(f"correlation_mm must be positive; got {correlation_mm!r}")
    size = math.ceil(FIELD_BOX_MM / correlation_mm) + 1
    white = np.random.default_rng(seed).standard_normal((size, size, size), dtype=np.float32)
    smooth = ndimage.gaussian_filter(white, 1.0, mode="wrap")
    smooth /= smooth.std()
    spacing = FIELD_BOX_MM / (size - 1)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = np.asarray(HEAD_CENTRE_MM) - FIELD_BOX_MM / 2
    return sample_channels(smooth[None], affine, points_mm, border=True)[0]
