"""Skull-stripped multi-contrast brain MR (T1, T1ce, T2, FLAIR) with a glioma of three nested
compartments, as in BraTS: necrotic core (label 1) inside an enhancing rim (label 4) inside
oedema (label 2).

Contrasts are mixed from tissue fractions with relative intensities that follow the usual
appearance: T1 WM > GM > CSF; T2 CSF > GM > WM; FLAIR like T2 with CSF suppressed; T1ce like T1,
plus contrast uptake in the tumour rim and in vessels on the brain's surface.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from brainkernels.data.synth.anatomy import compose_head, template_anatomy
from brainkernels.data.synth.fields import lattice_noise
from brainkernels.data.synth.grid import ADULT_FOV_MM, as_volume, block_around, ramp
from brainkernels.data.synth.placement import draw_point, placement_anatomy, placement_points
from brainkernels.data.synth.subject import Subject, subject_grid, tuple_fields
from brainkernels.data.volume import Volume

MODALITIES = ("t1", "t1ce", "t2", "flair")
SEG_LABELS = {"background": 0, "necrosis": 1, "oedema": 2, "enhancing": 4}
INTENSITY_SCALE = 1000.0
"""Scanner-like units: white matter near 800 on T1."""

_CONTRAST = {  # relative intensity of each tissue per modality, in MODALITIES order
    "csf": (0.25, 0.28, 1.00, 0.08),
    "grey": (0.55, 0.58, 0.62, 0.60),
    "white": (0.80, 0.82, 0.45, 0.45),
    "necrosis": (0.30, 0.30, 0.90, 0.50),
    "enhancing": (0.50, 1.25, 0.70, 0.75),
    "oedema": (0.50, 0.52, 0.88, 0.95),
}
_VESSEL_UPTAKE = 0.5
"""Extra T1ce intensity of the enhancing vessels on the brain's surface."""
_OEDEMA_WATER = 0.7
"""Share of an oedematous voxel's signal that comes from the extra water."""
_IRREGULARITY = 0.12
"""Amplitude of the smooth noise added to the tumour's normalised radius (capped at 2.5 sigma)."""
NOISE = 0.02
"""Standard deviation of the complex Gaussian noise behind Rician magnitude noise (relative units)."""


@dataclass(frozen=True)
class Tumour:
    """A glioma centred at ``centre_mm`` (template mm). The oedema spans about the ellipsoid of
    ``radii_mm``, reaching further along white matter; the enhancing rim ends at ``core_fraction``
    of that normalised radius and the necrotic core at ``necrosis_fraction``. ``seed`` fixes the
    irregular outline."""

    centre_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    core_fraction: float
    necrosis_fraction: float
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> Tumour:
        return cls(**tuple_fields(fields))


class BraTSScan(NamedTuple):
    images: dict[str, Volume]
    """``MODALITIES`` -> volume, zero outside the brain."""
    seg: Volume
    """``SEG_LABELS``: 0 background, 1 necrosis, 2 oedema, 4 enhancing tumour."""


def draw_tumour(rng: np.random.Generator) -> Tumour:
    """A tumour centred in the deep white matter of either cerebral hemisphere."""
    anatomy = placement_anatomy()
    x, _, z = placement_points()
    allowed = (anatomy.white > 0.5) & (anatomy.distance < -20) & (np.abs(x) > 15) & (z > -15)
    core = float(rng.uniform(0.4, 0.6))
    return Tumour(
        centre_mm=draw_point(rng, allowed, "tumour"),
        radii_mm=tuple(float(r) for r in rng.uniform(18.0, 32.0, 3)),
        core_fraction=core,
        necrosis_fraction=float(core * rng.uniform(0.3, 0.55)),
        seed=int(rng.integers(2**31)),
    )


def render_brats(subject: Subject, tumour: Tumour, shape: int = 96) -> BraTSScan:
    """The subject's four skull-stripped MR contrasts with ``tumour``, and its label map, on a
    ``shape``^3 grid of ``ADULT_FOV_MM``."""
    grid = subject_grid(subject, shape, ADULT_FOV_MM)
    grey, white, distance = template_anatomy(shape, ADULT_FOV_MM).sample(grid.points_mm)
    head = compose_head(grey, white, distance, skull_mm=subject.skull_mm, ramp_mm=grid.ramp_mm)
    brain = head.intracranial

    # Cumulative shares, necrosis <= core (necrosis and rim) <= whole tumour in every voxel.
    necrosis, core, whole = (np.zeros_like(brain) for _ in range(3))
    block = block_around(grid.points_mm, tumour.centre_mm, _reach_mm(tumour) + grid.ramp_mm)
    parts = _compartments(tumour, grid.points_mm[block], head.white[block], grid.ramp_mm)
    for share, part in zip((necrosis, core, whole), parts):
        share[block] = part * brain[block]

    texture = lattice_noise(subject.seed, 8.0, grid.points_mm)
    # Thin filaments where the smooth noise crosses zero, kept to the brain's surface: vessels.
    vessels = np.clip(1 - np.abs(texture) / 0.15, 0, 1) * np.clip(1 - np.abs(distance + 1) / 3, 0, 1) * brain
    noise = np.random.default_rng((subject.seed, 2))
    inside = brain > 0.5
    csf_gain, grey_gain, white_gain = subject.tissue_contrast
    images = {}
    for index, modality in enumerate(MODALITIES):
        level = {name: np.float32(values[index]) for name, values in _CONTRAST.items()}
        tissue = head.csf * (csf_gain * level["csf"]) + head.grey * (grey_gain * level["grey"])
        tissue = (tissue + head.white * (white_gain * level["white"])) * (1 + 0.03 * texture)
        oedema = (1 - _OEDEMA_WATER) * tissue + _OEDEMA_WATER * level["oedema"] * brain
        signal = (
            (1 - whole) * tissue
            + (whole - core) * oedema
            + (core - necrosis) * level["enhancing"]
            + necrosis * level["necrosis"]
        )
        if modality == "t1ce":
            signal += _VESSEL_UPTAKE * vessels * (1 - whole)
        images[modality] = as_volume(rician(signal * grid.bias, noise) * inside * INTENSITY_SCALE, grid.affine)

    seg = np.zeros(brain.shape, dtype=np.float32)
    seg[whole > 0.5] = SEG_LABELS["oedema"]
    seg[core > 0.5] = SEG_LABELS["enhancing"]
    seg[necrosis > 0.5] = SEG_LABELS["necrosis"]
    seg[~inside] = SEG_LABELS["background"]
    return BraTSScan(images, as_volume(seg, grid.affine))


def rician(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The magnitude of ``signal`` plus complex Gaussian noise of deviation ``NOISE``, as an MR
    magnitude image has."""
    real, imaginary = rng.standard_normal((2, *signal.shape), dtype=np.float32) * np.float32(NOISE)
    return np.sqrt((signal + real) ** 2 + imaginary**2)


def _reach_mm(tumour: Tumour) -> float:
    """How far from its centre the oedema can reach: normalised radius 1.3 along white matter,
    plus the outline's noise."""
    return max(tumour.radii_mm) * (1.3 + 2.5 * _IRREGULARITY)


def _compartments(tumour: Tumour, points: np.ndarray, white: np.ndarray, ramp_mm: float) -> tuple[np.ndarray, ...]:
    """Soft necrosis, core and whole-tumour shares; one irregular radius drives all three, so the
    compartments nest by construction."""
    radii = np.asarray(tumour.radii_mm, dtype=np.float32)
    radius = np.linalg.norm((points - np.asarray(tumour.centre_mm, dtype=np.float32)) / radii, axis=-1)
    radius -= _IRREGULARITY * np.clip(lattice_noise(tumour.seed, 8.0, points), -2.5, 2.5)
    mean_radius = np.float32(np.prod(radii) ** (1 / 3))
    # Oedema spreads along white-matter tracts and stops short in the cortex.
    edges = (tumour.necrosis_fraction, tumour.core_fraction, 0.7 + 0.6 * white)
    return tuple(ramp((edge - radius) * mean_radius, ramp_mm) for edge in edges)
