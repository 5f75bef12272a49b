"""Head CT in Hounsfield units with known findings: intracranial haemorrhages and calvarial
fractures, each with its voxel mask.

Findings are placed in template (MNI) millimetres and deformed with the subject, so a bleed drawn
in the left hemisphere of the template stays in the subject's left hemisphere whatever the pose.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from brainkernels.data.synth.anatomy import DEFAULT_SKULL_MM, EXTRA_AXIAL_CSF_MM, compose_head, template_anatomy
from brainkernels.data.synth.fields import lattice_noise
from brainkernels.data.synth.grid import ADULT_FOV_MM, HEAD_CENTRE_MM, as_volume, block_around, grid_axes, ramp
from brainkernels.data.synth.placement import draw_point, placement_anatomy, placement_points
from brainkernels.data.synth.subject import Subject, subject_grid, tuple_fields
from brainkernels.data.volume import Volume

HU_RANGE = (-1024.0, 3071.0)
"""What a 12-bit CT scanner stores."""
HOUNSFIELD = {
    "air": -1000.0,
    "scalp": 35.0,
    "csf": 8.0,
    "grey": 40.0,
    "white": 28.0,
    "table": 1700.0,  # compact outer and inner tables of the calvaria
    "diploe": 800.0,  # the cancellous bone between them
    "fracture": 45.0,  # a fresh fracture line holds blood and soft tissue
}
NOISE_HU = 3.0
"""Quantum noise of a thick-slice head CT."""
TEXTURE_HU = 2.0
"""Amplitude of the subject's smooth parenchymal texture."""
MASK_LABELS = {"none": 0, "haemorrhage": 1, "fracture": 2}
STRUCTURE_LABELS = {"left": 1, "right": 2, "skull": 3}
SIDES = ("left", "right")
HAEMORRHAGE_KINDS = ("intraparenchymal", "subdural")

_IRREGULARITY = 0.2
"""Amplitude of the smooth noise added to a haemorrhage's normalised radius (capped at 2.5 sigma)."""


@dataclass(frozen=True)
class Haemorrhage:
    """A hyperdense blood collection on one side of the midline.

    intraparenchymal: an irregular ellipsoid with semi-axes ``radii_mm`` inside the brain;
    subdural: a crescent between the inner table and the brain, spanning the ellipse of
    ``radii_mm`` along the skull and at most a quarter of its smallest radius thick.
    ``seed`` fixes the irregular outline."""

    kind: str
    side: str
    centre_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    density_hu: float
    seed: int


@dataclass(frozen=True)
class Fracture:
    """A calvarial fracture: a jagged gap of ``width_mm`` through the skull, ``length_mm`` long,
    along the plane through ``centre_mm`` with unit ``normal`` (tangent to the skull); ``seed``
    fixes the jag."""

    centre_mm: tuple[float, float, float]
    normal: tuple[float, float, float]
    length_mm: float
    width_mm: float
    seed: int


@dataclass(frozen=True)
class HeadFindings:
    """The ground truth of one scan; no haemorrhage and no fracture is a healthy scan."""

    haemorrhages: tuple[Haemorrhage, ...] = ()
    fracture: Fracture | None = None

    @property
    def left_bleed(self) -> bool:
        return any(h.side == "left" for h in self.haemorrhages)

    @property
    def right_bleed(self) -> bool:
        return any(h.side == "right" for h in self.haemorrhages)

    @property
    def healthy(self) -> bool:
        return not self.haemorrhages and self.fracture is None

    def to_dict(self) -> dict:
        return {
            "haemorrhages": [asdict(h) for h in self.haemorrhages],
            "fracture": None if self.fracture is None else asdict(self.fracture),
        }

    @classmethod
    def from_dict(cls, fields: dict) -> HeadFindings:
        fracture = fields.get("fracture")
        return cls(
            haemorrhages=tuple(Haemorrhage(**tuple_fields(h)) for h in fields.get("haemorrhages", ())),
            fracture=None if fracture is None else Fracture(**tuple_fields(fracture)),
        )


class CTScan(NamedTuple):
    image: Volume
    """Hounsfield units: whole numbers in ``HU_RANGE`` (float32; write as int16)."""
    mask: Volume
    """``MASK_LABELS``: 0 none, 1 haemorrhage, 2 fracture."""


def draw_findings(rng: np.random.Generator, *, left: bool, right: bool, fracture: bool) -> HeadFindings:
    """Findings with a haemorrhage in each requested hemisphere and, if asked, a calvarial
    fracture (on the side of a bleed when there is one: one blow causes both)."""
    haemorrhages = tuple(draw_haemorrhage(rng, side) for side, wanted in zip(SIDES, (left, right)) if wanted)
    fracture_side = haemorrhages[0].side if haemorrhages else SIDES[int(rng.integers(2))]
    return HeadFindings(haemorrhages, draw_fracture(rng, fracture_side) if fracture else None)


def draw_haemorrhage(rng: np.random.Generator, side: str, kind: str | None = None) -> Haemorrhage:
    """A haemorrhage in the ``side`` ("left", "right") hemisphere: intraparenchymal or subdural as
    ``kind`` says, else three in five intraparenchymal."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}; got {side!r}")
    if kind is None:
        kind = HAEMORRHAGE_KINDS[int(rng.choice(2, p=[0.6, 0.4]))]
    elif kind not in HAEMORRHAGE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(HAEMORRHAGE_KINDS)}; got {kind!r}")
    anatomy = placement_anatomy()
    x, _, z = placement_points()
    lateral = x if side == "right" else -x
    if kind == "intraparenchymal":
        # Deep in a cerebral hemisphere, clear of the midline.
        allowed = (anatomy.grey + anatomy.white > 0.8) & (anatomy.distance < -12) & (lateral > 15) & (z > -25)
        radii = rng.uniform(6.0, 18.0, 3)
    else:
        # Over the convexity, on the brain's surface.
        allowed = (anatomy.distance > -3) & (anatomy.distance < 0) & (lateral > 25) & (z > -5)
        radii = rng.uniform(25.0, 45.0, 3)
    return Haemorrhage(
        kind=kind,
        side=side,
        centre_mm=draw_point(rng, allowed, f"{kind} haemorrhage"),
        radii_mm=tuple(float(r) for r in radii),
        density_hu=float(rng.uniform(60.0, 80.0)),
        seed=int(rng.integers(2**31)),
    )


def draw_fracture(rng: np.random.Generator, side: str) -> Fracture:
    """A calvarial fracture in the vault over the ``side`` ("left", "right") hemisphere."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}; got {side!r}")
    anatomy = placement_anatomy()
    x, _, z = placement_points()
    lateral = x if side == "right" else -x
    middle_of_skull = EXTRA_AXIAL_CSF_MM + DEFAULT_SKULL_MM / 2
    # The calvaria: the vault above the skull base, on the requested side.
    allowed = (np.abs(anatomy.distance - middle_of_skull) < 2.0) & (lateral > 10) & (z > 20)
    centre = np.asarray(draw_point(rng, allowed, "calvarial fracture"))
    outward = centre - np.asarray(HEAD_CENTRE_MM)
    outward /= np.linalg.norm(outward)
    direction = rng.standard_normal(3)
    normal = direction - direction @ outward * outward  # the fracture plane holds the outward direction
    normal /= np.linalg.norm(normal)
    return Fracture(
        centre_mm=tuple(float(c) for c in centre),
        normal=tuple(float(n) for n in normal),
        length_mm=float(rng.uniform(30.0, 60.0)),
        width_mm=float(rng.uniform(1.5, 3.0)),
        seed=int(rng.integers(2**31)),
    )


def render_ct(subject: Subject, findings: HeadFindings, shape: int = 96) -> CTScan:
    """The subject's head CT with ``findings`` on a ``shape``^3 grid of ``ADULT_FOV_MM``."""
    grid = subject_grid(subject, shape, ADULT_FOV_MM)
    grey, white, distance = template_anatomy(shape, ADULT_FOV_MM).sample(grid.points_mm)
    head = compose_head(grey, white, distance, skull_mm=subject.skull_mm, ramp_mm=grid.ramp_mm)

    # Blood's share of the intracranial contents, and its density.
    blood = np.zeros_like(distance)
    blood_hu = np.zeros_like(distance)
    for haemorrhage in findings.haemorrhages:
        block = block_around(grid.points_mm, haemorrhage.centre_mm, _reach_mm(haemorrhage) + grid.ramp_mm)
        share = _haemorrhage_share(haemorrhage, grid.points_mm[block], distance[block], grid.ramp_mm)
        blood[block] = np.maximum(blood[block], share)
        blood_hu[block] = np.where(share > 0, np.float32(haemorrhage.density_hu), blood_hu[block])
    # The fracture line's share of the bone.
    gap = np.zeros_like(distance)
    if (fracture := findings.fracture) is not None:
        reach = fracture.length_mm / 2 + fracture.width_mm + 2 * grid.ramp_mm
        block = block_around(grid.points_mm, fracture.centre_mm, reach)
        gap[block] = _fracture_gap(fracture, grid.points_mm[block], grid.ramp_mm)

    hu = {name: np.float32(value) for name, value in HOUNSFIELD.items()}
    texture = TEXTURE_HU * lattice_noise(subject.seed, 8.0, grid.points_mm)
    parenchyma = head.grey * (hu["grey"] + texture) + head.white * (hu["white"] + texture) + head.csf * hu["csf"]
    soft_tissue = (1 - blood) * parenchyma + blood * head.intracranial * blood_hu + head.scalp * hu["scalp"]
    bone = head.bone
    image = (
        soft_tissue * grid.bias  # beam hardening: soft-tissue values drift slowly across the head
        + (1 - gap) * ((head.inner_table + head.outer_table) * hu["table"] + head.diploe * hu["diploe"])
        + gap * bone * hu["fracture"]
        + (1 - head.intracranial - bone - head.scalp) * hu["air"]
    )
    image += NOISE_HU * np.random.default_rng((subject.seed, 1)).standard_normal(image.shape, dtype=np.float32)
    image = np.round(np.clip(image, *HU_RANGE))

    mask = np.zeros(image.shape, dtype=np.float32)
    mask[blood * head.intracranial > 0.5] = MASK_LABELS["haemorrhage"]
    mask[(gap > 0.5) & (bone > 0.5)] = MASK_LABELS["fracture"]
    return CTScan(as_volume(image, grid.affine), as_volume(mask, grid.affine))


def ct_structures(shape: int = 96) -> Volume:
    """The structure map of the template head on the CT grid: 1 left hemisphere, 2 right
    hemisphere (everything inside the skull, split at the midline x = 0), 3 skull."""
    anatomy = template_anatomy(shape, ADULT_FOV_MM)
    ramp_mm = ADULT_FOV_MM / shape
    head = compose_head(anatomy.grey, anatomy.white, anatomy.distance, skull_mm=DEFAULT_SKULL_MM, ramp_mm=ramp_mm)
    left = (grid_axes(shape, ADULT_FOV_MM)[0] < 0)[:, None, None]
    structures = np.zeros((shape, shape, shape), dtype=np.float32)
    structures[(head.intracranial > 0.5) & left] = STRUCTURE_LABELS["left"]
    structures[(head.intracranial > 0.5) & ~left] = STRUCTURE_LABELS["right"]
    structures[head.bone > 0.5] = STRUCTURE_LABELS["skull"]
    return as_volume(structures, anatomy.affine)


def _reach_mm(haemorrhage: Haemorrhage) -> float:
    """How far from its centre a haemorrhage's irregular outline can reach."""
    return max(haemorrhage.radii_mm) * (1 + 2.5 * _IRREGULARITY)


def _haemorrhage_share(
    haemorrhage: Haemorrhage, points: np.ndarray, distance: np.ndarray, ramp_mm: float
) -> np.ndarray:
    """The share of each voxel's intracranial contents that is blood."""
    radii = np.asarray(haemorrhage.radii_mm, dtype=np.float32)
    radius = np.linalg.norm((points - np.asarray(haemorrhage.centre_mm, dtype=np.float32)) / radii, axis=-1)
    radius -= _IRREGULARITY * np.clip(lattice_noise(haemorrhage.seed, 6.0, points), -2.5, 2.5)
    share = ramp((1 - radius) * np.float32(np.prod(radii) ** (1 / 3)), ramp_mm)
    # Blood stays on its side of the falx.
    share *= ramp(-points[..., 0] if haemorrhage.side == "left" else points[..., 0], ramp_mm)
    if haemorrhage.kind == "subdural":
        depth = 0.25 * radii.min() * np.maximum(1 - radius**2, 0)
        share *= ramp(distance + depth, ramp_mm)
    return share


def _fracture_gap(fracture: Fracture, points: np.ndarray, ramp_mm: float) -> np.ndarray:
    """The share of each voxel's bone that the fracture line removes."""
    offset = points - np.asarray(fracture.centre_mm, dtype=np.float32)
    across = offset @ np.asarray(fracture.normal, dtype=np.float32)
    along = np.sqrt(np.maximum((offset**2).sum(axis=-1) - across**2, 0))
    across += 1.0 * lattice_noise(fracture.seed, 8.0, points)
    # A line thinner than a voxel would vanish in the partial volume; widen it to stay visible.
    half_width = max(fracture.width_mm, 1.5 * ramp_mm) / 2
    return ramp(half_width - np.abs(across), ramp_mm) * ramp(fracture.length_mm / 2 - along, ramp_mm)
