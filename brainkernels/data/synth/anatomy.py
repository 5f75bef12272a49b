"""Template anatomy: the MNI152 2009 grey- and white-matter maps that ship with nilearn, plus a
synthetic skull and scalp, resampled once per output grid.

The head around the brain is described by one signed distance to the brain's outer envelope
(negative inside); skull and scalp are shells at fixed distances from it. A distance field
interpolates smoothly, so the shells stay sharp at any output resolution and move with the brain
when a subject's deformation is applied.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from brainkernels.data.synth.grid import grid_affine, grid_points, ramp, sample_channels

EXTRA_AXIAL_CSF_MM = 1.5
"""Subarachnoid space between the brain's envelope and the inner table of the skull."""
SCALP_MM = 5.0
DEFAULT_SKULL_MM = 6.5
"""Adult calvarial thickness; a quarter each for the outer and inner tables, half diploë."""

_NECK_MM = 40
"""The template ends 72 mm below the AC; its lowest slice (the medulla) is repeated this far down
so that the head continues into a neck instead of the skull closing under the brainstem."""
_ENVELOPE_MM = 2
"""Resolution of the distance field: fine enough for a surface that is smooth on a 3 mm scale."""


@dataclass(frozen=True)
class TemplateAnatomy:
    """Tissue maps of the template on one cubic grid: grey and white matter fractions in [0, 1]
    and the signed distance (mm) to the brain's envelope, stacked as ``channels`` (3, D, H, W)."""

    channels: np.ndarray
    affine: np.ndarray

    @property
    def grey(self) -> np.ndarray:
        return self.channels[0]

    @property
    def white(self) -> np.ndarray:
        return self.channels[1]

    @property
    def distance(self) -> np.ndarray:
        return self.channels[2]

    def sample(self, points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Grey, white and distance at world points (..., 3); beyond the grid there is no tissue
        and the distance continues from the grid's edge."""
        grey, white = sample_channels(self.channels[:2], self.affine, points_mm)
        distance = sample_channels(self.channels[2:], self.affine, points_mm, border=True)[0]
        return grey, white, distance


@dataclass(frozen=True)
class Head:
    """Partial-volume fractions of a head's compartments in each voxel; they sum to at most 1, the
    rest is air. ``intracranial`` = grey + white + csf, everything inside the skull."""

    grey: np.ndarray
    white: np.ndarray
    csf: np.ndarray
    intracranial: np.ndarray
    inner_table: np.ndarray
    diploe: np.ndarray
    outer_table: np.ndarray
    scalp: np.ndarray

    @property
    def bone(self) -> np.ndarray:
        return self.inner_table + self.diploe + self.outer_table


def compose_head(
    grey: np.ndarray, white: np.ndarray, distance_mm: np.ndarray, *, skull_mm: float, ramp_mm: float,
    depression_mm: np.ndarray | None = None, swelling_mm: np.ndarray | None = None,
) -> Head:
    """The compartments of a head from template tissue maps and the signed distance to the brain's
    envelope; ``ramp_mm`` (about a voxel) is the width over which a boundary is shared between two
    voxels. CSF fills what the brain leaves of the intracranial space.

    An injured head: ``depression_mm`` (per voxel) pushes the skull inward by that much, into the
    intracranial space, and the scalp fills the dent; ``swelling_mm`` thickens the scalp outward."""
    boundaries = np.cumsum([EXTRA_AXIAL_CSF_MM, skull_mm / 4, skull_mm / 2, skull_mm / 4, SCALP_MM])
    inside = []
    for index, edge in enumerate(boundaries):
        signed = np.float32(edge) - distance_mm
        if depression_mm is not None and index < len(boundaries) - 1:
            signed = signed - depression_mm
        if swelling_mm is not None and index == len(boundaries) - 1:
            signed = signed + swelling_mm
        inside.append(ramp(signed, ramp_mm))
    intracranial = inside[0]
    grey, white = grey * intracranial, white * intracranial
    return Head(
        grey=grey,
        white=white,
        csf=np.maximum(intracranial - grey - white, 0),
        intracranial=intracranial,
        inner_table=inside[1] - inside[0],
        diploe=inside[2] - inside[1],
        outer_table=inside[3] - inside[2],
        scalp=inside[4] - inside[3],
    )


@functools.cache
def template_anatomy(shape: int, fov_mm: float) -> TemplateAnatomy:
    """The template resampled to the ``shape``^3 grid of ``fov_mm`` (computed once per process and
    grid; the arrays are shared: treat them as read-only)."""
    affine = grid_affine(shape, fov_mm)
    grey, white, tissue_affine, distance, distance_affine = _template_head()
    points = grid_points(shape, fov_mm)
    spacing = fov_mm / shape
    # Blur the 1 mm maps before sampling a coarser grid, so a thin cortex does not alias.
    sigma = 0.4 * spacing if spacing > 1.0 else 0.0
    tissue = np.stack([ndimage.gaussian_filter(m, sigma) if sigma else m for m in (grey, white)])
    channels = np.concatenate([
        sample_channels(tissue, tissue_affine, points),
        sample_channels(distance[None], distance_affine, points, border=True),
    ])
    return TemplateAnatomy(channels, affine)


@functools.cache
def template_head_circumference_mm() -> float:
    """Occipitofrontal circumference of the template head with the default skull, measured the way
    `measure_circumference_mm` measures a rendered head."""
    _, _, _, distance, affine = _template_head()
    outer = EXTRA_AXIAL_CSF_MM + DEFAULT_SKULL_MM + SCALP_MM
    return measure_circumference_mm(distance < outer, affine[0, 0])


def measure_circumference_mm(mask: np.ndarray, spacing_mm: float) -> float:
    """Circumference of a head or brain mask (D, H, W) as a tape around its widest axial section:
    the perimeter (Ramanujan's approximation) of the ellipse whose axes are that section's
    left-right and front-back extents."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3 or not mask.any():
        raise ValueError(f"mask must be a non-empty 3D mask; got shape {mask.shape} with {int(mask.sum())} voxels set")
    section = mask[:, :, int(np.argmax(mask.sum(axis=(0, 1))))]
    width = np.ptp(np.flatnonzero(section.any(axis=1))) + 1
    length = np.ptp(np.flatnonzero(section.any(axis=0))) + 1
    a, b = width * spacing_mm / 2, length * spacing_mm / 2
    return float(np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b))))


@functools.cache
def _template_head() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grey and white matter at 1 mm with a neck below, their affine, and the signed distance to
    the brain's envelope at 2 mm with its affine."""
    grey, white, affine = _mni152_tissue()
    grey, white = (np.concatenate([np.repeat(m[:, :, :1], _NECK_MM, axis=2), m], axis=2) for m in (grey, white))
    affine = affine.copy()
    affine[:3, 3] -= affine[:3, 2] * _NECK_MM

    factor = _ENVELOPE_MM
    brain = np.clip(grey + white, 0, 1)
    brain = brain[tuple(slice(0, size // factor * factor) for size in brain.shape)]
    coarse = brain.reshape([n for size in brain.shape for n in (size // factor, factor)]).mean(axis=(1, 3, 5))
    # Closing the sulci with a 3 mm blur gives the smooth surface the skull is moulded on.
    envelope = ndimage.binary_fill_holes((ndimage.gaussian_filter(coarse, 1.5) > 0.3) | (coarse > 0.5))
    distance = factor * (ndimage.distance_transform_edt(~envelope) - ndimage.distance_transform_edt(envelope))
    distance = ndimage.gaussian_filter(distance, 1.0).astype(np.float32)
    # Coarse voxel k averages fine voxels factor*k .. factor*k + factor - 1.
    distance_affine = affine @ np.diag([factor, factor, factor, 1.0])
    distance_affine[:3, 3] = affine[:3, :3] @ np.full(3, (factor - 1) / 2) + affine[:3, 3]
    return grey, white, affine, distance, distance_affine


def _mni152_tissue() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MNI152 2009 grey- and white-matter probability maps (1 mm, RAS) that ship inside
    nilearn; nilearn reads them from its package data, never from the network."""
    try:
        from nilearn import datasets
    except ImportError as error:
        raise ImportError("synthetic cohorts need nilearn for the MNI152 template: pip install nilearn") from error
    grey_image = nib.as_closest_canonical(datasets.load_mni152_gm_template(resolution=1))
    white_image = nib.as_closest_canonical(datasets.load_mni152_wm_template(resolution=1))
    if not np.allclose(grey_image.affine, white_image.affine):
        raise RuntimeError("nilearn's MNI152 grey- and white-matter templates are not on one grid")
    grey = np.asarray(grey_image.dataobj, dtype=np.float32)
    white = np.asarray(white_image.dataobj, dtype=np.float32)
    return grey, white, np.asarray(grey_image.affine, dtype=np.float64)
