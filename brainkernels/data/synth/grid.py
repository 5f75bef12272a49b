"""Geometry of the synthetic grids and trilinear sampling between grids.

World coordinates are MNI millimetres (RAS). Every synthetic grid is a cube of ``shape`` voxels
per side spanning ``fov_mm`` and centred on ``HEAD_CENTRE_MM``, so voxel (d, h, w) runs along
x (left to right), y (posterior to anterior), z (inferior to superior): the left hemisphere lies
at low d.

Fields are float32 numpy arrays: the generator's elementwise arithmetic runs in numpy, which is
single-threaded and so keeps its speed on a busy machine, where torch's intra-op threads contend.
Only the interpolation itself is torch's ``grid_sample``.
"""

from __future__ import annotations

import numpy as np
import torch

from brainkernels.data.volume import Volume

HEAD_CENTRE_MM = (0.0, -17.0, 10.0)
"""Centre of every synthetic grid: the middle of the MNI152 brain's bounding box (x -72..72,
y -107..73), raised in z so that the grid holds the vertex and the neck below the brainstem."""
ADULT_FOV_MM = 224.0
"""Side of the adult field of view: the head with scalp (about 170 x 205 mm) and a few mm of pose;
BraTS volumes span 240 mm in-plane, head CTs about as much."""


def grid_affine(shape: int, fov_mm: float) -> np.ndarray:
    """Voxel-to-world affine of a ``shape``^3 grid of spacing ``fov_mm / shape`` around the head centre."""
    if not isinstance(shape, int) or shape < 8:
        raise ValueError(f"shape must be an integer of at least 8 voxels per side; got {shape!r}")
    if not fov_mm > 0:
        raise ValueError(f"fov_mm must be positive; got {fov_mm!r}")
    spacing = fov_mm / shape
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = np.asarray(HEAD_CENTRE_MM) - spacing * (shape - 1) / 2
    return affine


def grid_axes(shape: int, fov_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates (mm) of the voxel centres along x, y and z of the grid."""
    affine = grid_affine(shape, fov_mm)
    index = np.arange(shape)
    return tuple((affine[axis, 3] + affine[axis, axis] * index).astype(np.float32) for axis in range(3))


def grid_points(shape: int, fov_mm: float) -> np.ndarray:
    """World coordinates (mm) of every voxel centre, (D, H, W, 3)."""
    return np.stack(np.meshgrid(*grid_axes(shape, fov_mm), indexing="ij"), axis=-1)


def sample_channels(
    channels: np.ndarray, affine: np.ndarray, points_mm: np.ndarray, *, border: bool = False
) -> np.ndarray:
    """Trilinear samples of ``channels`` (C, D, H, W), a grid with voxel-to-world ``affine``, at
    world points ``points_mm`` (..., 3); (C, ...). Outside the grid: zero, or with ``border`` the
    nearest edge value."""
    sizes = np.asarray(channels.shape[1:], dtype=np.float64)
    # World -> grid_sample's [-1, 1] coordinates, whose last component indexes the first axis (D).
    to_normalised = np.diag([*(2 / (sizes - 1)), 1.0]) @ np.linalg.inv(affine)
    to_normalised[:3, 3] -= 1
    grid = np.empty(points_mm.shape, dtype=np.float32)
    for axis in range(3):
        weights = to_normalised[axis].astype(np.float32)
        grid[..., 2 - axis] = sum(points_mm[..., k] * weights[k] for k in range(3)) + weights[3]
    sampled = torch.nn.functional.grid_sample(
        torch.from_numpy(np.ascontiguousarray(channels, dtype=np.float32))[None],
        torch.from_numpy(grid).reshape(1, 1, 1, -1, 3),
        mode="bilinear",
        padding_mode="border" if border else "zeros",
        align_corners=True,
    )
    return sampled.numpy().reshape(channels.shape[0], *points_mm.shape[:-1])


def block_around(points_mm: np.ndarray, centre_mm: tuple[float, float, float], radius_mm: float) -> tuple[slice, ...]:
    """The smallest block of a grid (D, H, W) that holds every voxel whose point (``points_mm``,
    (D, H, W, 3)) lies within ``radius_mm`` of ``centre_mm`` along each axis; an empty block if
    none does. Lets a lesion be computed on its neighbourhood instead of the whole volume."""
    near = np.all(np.abs(points_mm - np.asarray(centre_mm, dtype=np.float32)) < radius_mm, axis=-1)
    block = []
    for axis in range(3):
        hits = np.flatnonzero(near.any(axis=tuple(other for other in range(3) if other != axis)))
        block.append(slice(int(hits[0]), int(hits[-1]) + 1) if len(hits) else slice(0, 0))
    return tuple(block)


def ramp(signed_mm: np.ndarray, ramp_mm: float) -> np.ndarray:
    """Partial-volume share of a voxel that lies inside a boundary, from the signed distance to it
    (positive inside): 0 to 1 over ``ramp_mm`` (about one voxel) centred on the boundary."""
    return np.clip(signed_mm / ramp_mm + 0.5, 0.0, 1.0)


def as_volume(array: np.ndarray, affine: np.ndarray) -> Volume:
    """A one-channel float32 volume of a (D, H, W) array."""
    return Volume(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None], affine)
