"""Synthetic subjects: the identity that every scan of one person shares, and the mapping from
the voxels of their scan to the template anatomy.

A scan voxel at world point y shows template point

    x = c + R^T (y' + u(y') - c) - t,    y' = c + (y - c) / scale

with c the head centre, u the subject's smooth deformation, R and t the rigid head pose, and
``scale`` the head's size relative to the adult template: the subject's own head size times the
median head's at their age (1 for adults; neonates grow along a growth curve). The deformation
acts on the rescaled point y', so a child keeps the same anatomy, relative to head size, at
every age.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from brainkernels.data.synth.anatomy import DEFAULT_SKULL_MM
from brainkernels.data.synth.fields import cosine_field, rotation_matrix
from brainkernels.data.synth.grid import HEAD_CENTRE_MM, grid_affine, grid_axes

DEFORMATION_SHAPE = (3, 4, 4, 4)
"""Cosine coefficients of the deformation: component (x, y, z) by 0-3 half-waves along x, y, z."""
BIAS_SHAPE = (2, 2, 2)
"""Cosine coefficients of the log MR bias field: 0-1 half-waves along x, y, z."""


@dataclass(frozen=True)
class Subject:
    """One synthetic person, drawn from ``seed``; ``seed`` also fixes their tissue texture.

    ``head_size`` is the head's size relative to the median head (of the template adult, or of
    a neonate of the same age): the subject's centile. ``deformation_mm`` and ``log_bias`` are the
    flattened coefficient arrays of shapes ``DEFORMATION_SHAPE`` and ``BIAS_SHAPE``;
    ``tissue_contrast`` scales the CSF, grey- and white-matter intensities of MR scans.
    """

    seed: int
    head_size: float
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    deformation_mm: tuple[float, ...]
    log_bias: tuple[float, ...]
    skull_mm: float
    tissue_contrast: tuple[float, float, float]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> Subject:
        """The subject recorded by `to_dict` (as read back from cohort.json)."""
        return cls(**tuple_fields(fields))


@dataclass(frozen=True)
class SubjectGrid:
    """Where the voxels of one scan of a subject lie in the template (``points_mm``, (D, H, W, 3)),
    and the scan's multiplicative MR bias. ``ramp_mm`` is one scan voxel measured in template
    millimetres: the width of a partial-volume boundary between compartments."""

    points_mm: np.ndarray
    bias: np.ndarray
    affine: np.ndarray
    ramp_mm: float


def draw_subject(seed: int) -> Subject:
    """A subject whose head size (3.5% standard deviation, as head circumference has), pose (about
    2 degrees, 2 mm), deformation (a few mm), skull thickness, bias field and tissue contrasts are
    drawn from ``seed``."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    rng = np.random.default_rng(seed)
    deformation = rng.normal(0.0, 0.4, DEFORMATION_SHAPE)
    deformation[:, 0, 0, 0] = 0.0  # a constant shift is the pose's job
    log_bias = rng.normal(0.0, 0.06, BIAS_SHAPE)
    log_bias[0, 0, 0] = 0.0
    return Subject(
        seed=int(seed),
        head_size=float(np.clip(rng.lognormal(0.0, 0.035), 0.93, 1.07)),
        rotation_deg=_floats(rng.normal(0.0, 2.0, 3)),
        translation_mm=_floats(rng.normal(0.0, 2.0, 3)),
        deformation_mm=_floats(deformation),
        log_bias=_floats(log_bias),
        skull_mm=float(np.clip(rng.normal(DEFAULT_SKULL_MM, 0.6), 5.0, 8.0)),
        tissue_contrast=_floats(np.clip(rng.normal(1.0, 0.04, 3), 0.9, 1.1)),
    )


def subject_grid(subject: Subject, shape: int, fov_mm: float, *, scale: float = 1.0) -> SubjectGrid:
    """The template point shown by each voxel of a ``shape``^3 scan of ``fov_mm`` of ``subject``,
    whose median head at this age is ``scale`` times the template's size."""
    if not scale > 0:
        raise ValueError(f"scale must be positive; got {scale!r}")
    scale *= subject.head_size
    centre = np.asarray(HEAD_CENTRE_MM, dtype=np.float32)
    axes = [c + (axis - c) / np.float32(scale) for axis, c in zip(grid_axes(shape, fov_mm), centre)]
    displacement = cosine_field(np.reshape(subject.deformation_mm, DEFORMATION_SHAPE), axes)
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1) + np.moveaxis(displacement, 0, -1)
    # (p - c) @ R applies R^T to every row: the inverse of the head's rotation.
    rotation = rotation_matrix(subject.rotation_deg).astype(np.float32)
    points = (points - centre) @ rotation + (centre - np.asarray(subject.translation_mm, dtype=np.float32))
    bias = np.exp(cosine_field(np.reshape(subject.log_bias, BIAS_SHAPE), axes))
    return SubjectGrid(points, bias, grid_affine(shape, fov_mm), ramp_mm=fov_mm / shape / scale)


def tuple_fields(fields: dict) -> dict:
    """JSON fields with lists turned back into the tuples a frozen record holds."""
    return {name: tuple(value) if isinstance(value, list) else value for name, value in fields.items()}


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(value) for value in np.asarray(values).ravel())
