"""Neonatal brain development: T2-weighted head MR of one subject at any postmenstrual age from
26 to 45 weeks, with the head growing along a head-circumference curve, the cortex folding and
the white matter myelinating, while the subject's identity (deformation, texture, pose) stays.

On T2 the unmyelinated neonatal white matter is brighter than the cortex, and CSF brightest; as
myelin forms (from the deep white matter outwards, mostly around term) white matter darkens
towards grey.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage, special

from brainkernels.data.synth.anatomy import (
    TemplateAnatomy,
    compose_head,
    template_anatomy,
    template_head_circumference_mm,
)
from brainkernels.data.synth.fields import lattice_noise
from brainkernels.data.synth.grid import ADULT_FOV_MM, as_volume, ramp
from brainkernels.data.synth.mr import rician
from brainkernels.data.synth.subject import Subject, subject_grid
from brainkernels.data.volume import Volume

AGE_RANGE_WEEKS = (26.0, 45.0)
NEONATAL_FOV_MM = 160.0
"""Side of the neonatal field of view: a 45-week head (about 130 mm long) with room for the pose."""
INTENSITY_SCALE = 1000.0

_T2 = {"csf": 1.0, "grey": 0.42, "myelinated": 0.30, "scalp": 0.55, "bone": 0.06}
_UNMYELINATED_WHITE_T2 = (0.85, 0.62)
"""T2 of unmyelinated white matter at 26 and at 45 weeks: its water content falls with age."""
_FOLDING_BLUR_MM = 6.0
"""At 26 weeks the cortex is smoothed on this scale (template mm), which fills the adult
template's sulci; the blur shrinks to nothing at 45 weeks."""
_CORTICAL_BAND_MM = 18.0
"""Depth below the brain's envelope (template mm) over which the cortex unfolds with youth."""
_CORTEX_MM = 4.0
"""Thickness of the young cortex (template mm; about 2 mm in a preterm head)."""
_MYELIN_CENTRE_MM = (0.0, -18.0, 5.0)
_MYELIN_EXTENT_MM = (55.0, 75.0, 55.0)


class NeonatalScan(NamedTuple):
    t2: Volume
    """T2-weighted head, scanner-like units (CSF near 1000)."""
    brain_mask: Volume
    """1 inside the brain's outer envelope, else 0."""


def head_circumference_cm(age_weeks: float | np.ndarray) -> float | np.ndarray:
    """Median occipitofrontal head circumference (cm) at a postmenstrual age (weeks, 26-45).

    HC = 24 + u (71 - u) / 76 with u = age - 26: the quadratic through 24 cm at 26 weeks,
    34.5 cm at 40 weeks and 37 cm at 45 weeks, close to the 50th centile of the Fenton (2013)
    preterm growth chart that the INR paper compares its predictions with; growth slows from 9 mm
    a week at 26 weeks to 4 mm a week at 45.
    """
    age = np.asarray(age_weeks, dtype=np.float64)
    _check_age(age)
    u = age - AGE_RANGE_WEEKS[0]
    circumference = 24.0 + u * (71.0 - u) / 76.0
    return float(circumference) if circumference.ndim == 0 else circumference


def head_scale(age_weeks: float) -> float:
    """Size of a head at ``age_weeks`` relative to the adult template head."""
    return 10.0 * head_circumference_cm(age_weeks) / template_head_circumference_mm()


def render_neonate(subject: Subject, age_weeks: float, shape: int = 96) -> NeonatalScan:
    """``subject``'s T2-weighted head at ``age_weeks`` on a ``shape``^3 grid of ``NEONATAL_FOV_MM``."""
    maturity = (age_weeks - AGE_RANGE_WEEKS[0]) / (AGE_RANGE_WEEKS[1] - AGE_RANGE_WEEKS[0])
    grid = subject_grid(subject, shape, NEONATAL_FOV_MM, scale=head_scale(age_weeks))
    anatomy = _folded_anatomy(template_anatomy(shape, ADULT_FOV_MM), maturity)
    grey, white, distance = anatomy.sample(grid.points_mm)
    head = compose_head(grey, white, distance, skull_mm=subject.skull_mm, ramp_mm=grid.ramp_mm)

    t2 = {name: np.float32(value) for name, value in _T2.items()}
    myelin = _myelination(grid.points_mm, maturity)
    young, old = _UNMYELINATED_WHITE_T2
    white_t2 = (1 - myelin) * np.float32(young + (old - young) * maturity) + myelin * t2["myelinated"]
    csf_gain, grey_gain, white_gain = subject.tissue_contrast
    texture = lattice_noise(subject.seed, 8.0, grid.points_mm)
    brain = head.csf * (csf_gain * t2["csf"]) + head.grey * (grey_gain * t2["grey"])
    brain += head.white * (white_gain * white_t2)
    signal = (brain * (1 + 0.03 * texture) + head.scalp * t2["scalp"] + head.bone * t2["bone"]) * grid.bias

    noise = np.random.default_rng((subject.seed, 3, round(age_weeks * 1000)))
    image = rician(signal, noise) * INTENSITY_SCALE
    return NeonatalScan(as_volume(image, grid.affine), as_volume(distance < 0, grid.affine))


def _folded_anatomy(anatomy: TemplateAnatomy, maturity: float) -> TemplateAnatomy:
    """The template with its cortex unfolded for ``maturity`` (0 at 26 weeks, 1 at 45).

    The brain is blurred and re-sharpened, which closes sulci and rounds gyri; the white matter
    then reaches up to a cortical ribbon of fixed thickness under the smoothed surface, as in a
    younger brain whose cortex is a thin smooth sheet. Both fade out towards term. Only the
    cortical band changes; deeper down (ventricles, deep grey matter) the template stays."""
    spacing = anatomy.affine[0, 0]
    youth = (1 - maturity) ** 1.5  # folding speeds up towards term
    sigma = _FOLDING_BLUR_MM * youth / spacing
    if sigma < 1e-3:
        return anatomy

    def unfold(fraction: np.ndarray) -> np.ndarray:
        # Re-sharpened over 1 / (1 + sigma) of the blurred ramp: about as sharp as before the blur.
        return ramp(ndimage.gaussian_filter(fraction, sigma) - np.float32(0.5), 1 / (1 + sigma))

    brain = unfold(anatomy.grey + anatomy.white)
    # Blurred on the ribbon's own scale t, a flat surface reaches level Phi(1) at depth t below it,
    # where the blurred map rises by phi(1) / t per voxel of depth: a cheap stand-in for a distance map.
    thickness = _CORTEX_MM / spacing
    level, slope = special.ndtr(1.0), np.exp(-0.5) / np.sqrt(2 * np.pi) / thickness
    depth_beyond_ribbon = (ndimage.gaussian_filter(brain, thickness) - np.float32(level)) / np.float32(slope)
    # Fading the ribbon in with youth keeps the maps continuous in age, up to the template at 45 weeks.
    beneath_ribbon = np.float32(youth) * ramp(depth_beyond_ribbon, 1.0)
    white = np.minimum(np.maximum(unfold(anatomy.white), beneath_ribbon), brain)
    cortical = ramp(anatomy.distance + _CORTICAL_BAND_MM, _CORTICAL_BAND_MM)
    grey = cortical * (brain - white) + (1 - cortical) * anatomy.grey
    white = cortical * white + (1 - cortical) * anatomy.white
    return TemplateAnatomy(np.stack([grey, white, anatomy.distance]), anatomy.affine)


def _myelination(points: np.ndarray, maturity: float) -> np.ndarray:
    """Share of myelinated white matter: a front spreading outwards from the deep white matter,
    starting at about 34 weeks and reaching half-way to the cortex at 45."""
    radius = np.linalg.norm((points - np.float32(_MYELIN_CENTRE_MM)) / np.float32(_MYELIN_EXTENT_MM), axis=-1)
    return special.expit((0.9 * (maturity - 0.45) - radius) / 0.07).astype(np.float32)


def _check_age(age: np.ndarray) -> None:
    low, high = AGE_RANGE_WEEKS
    if not np.all((age >= low) & (age <= high)):
        raise ValueError(f"age_weeks must lie within {low:g}-{high:g} postmenstrual weeks; got {age.tolist()!r}")
