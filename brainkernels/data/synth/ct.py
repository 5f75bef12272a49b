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
from brainkernels.data.synth.grid import ADULT_FOV_MM, as_volume, block_around, grid_axes, ramp
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
FRACTURE_KINDS = ("linear", "depressed", "multiple")
FRACTURE_WIDTH_MM = (1.0, 3.0)
"""Range of a fracture line's width (real calvarial fracture lines are 1-3 mm wide on 1 mm CT)."""

_IRREGULARITY = 0.2
"""Amplitude of the smooth noise added to a haemorrhage's normalised radius (capped at 2.5 sigma)."""
_JAG_MM = 1.0
"""Amplitude of the smooth noise that makes fracture lines and a fragment's outline jagged."""
_FRACTURE_DEPTH_MM = (-30.0, 20.0)
"""How far inward (negative) and outward of the impact point, along its outward direction, a
fracture acts: enough for the skull's curvature under a line 80 mm long, and never reaching the
far side of the head."""


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
class FractureLine:
    """One fracture line: a jagged gap ``width_mm`` wide through the full thickness of the skull,
    ``length_mm`` long, in the plane through ``centre_mm`` with unit ``normal``. The plane holds
    the skull's outward direction, so the gap runs from the inner to the outer table; ``seed``
    fixes the jag."""

    centre_mm: tuple[float, float, float]
    normal: tuple[float, float, float]
    length_mm: float
    width_mm: float
    seed: int


@dataclass(frozen=True)
class Fracture:
    """A calvarial fracture of ``kind`` (``FRACTURE_KINDS``) around the point of impact
    ``impact_mm`` (in the middle of the skull; ``outward`` is the skull's unit normal there).

    linear: one line through the impact; multiple: two to four lines radiating from it;
    depressed: a fragment of radius ``fragment_radius_mm`` around the impact, cut free by a ring
    fracture ``ring_width_mm`` wide and pushed ``depression_mm`` inward, with at most two lines
    radiating from the ring. Every fracture comes with scalp swelling: the scalp thickened by
    ``swelling_mm`` over the impact, tapering to nothing ``swelling_radius_mm`` away. ``seed``
    fixes the fragment's jagged outline."""

    kind: str
    impact_mm: tuple[float, float, float]
    outward: tuple[float, float, float]
    lines: tuple[FractureLine, ...]
    fragment_radius_mm: float
    ring_width_mm: float
    depression_mm: float
    swelling_mm: float
    swelling_radius_mm: float
    seed: int

    @classmethod
    def from_dict(cls, fields: dict) -> Fracture:
        if "kind" not in fields:
            raise ValueError("a fracture recorded by a generator before version 2 (no 'kind'); regenerate the cohort")
        fields = tuple_fields(fields)
        return cls(**{**fields, "lines": tuple(FractureLine(**tuple_fields(line)) for line in fields["lines"])})


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
            fracture=None if fracture is None else Fracture.from_dict(fracture),
        )


class CTScan(NamedTuple):
    image: Volume
    """Hounsfield units: whole numbers in ``HU_RANGE`` (float32; write as int16)."""
    mask: Volume
    """``MASK_LABELS``: 0 none, 1 haemorrhage, 2 fracture."""


def draw_findings(rng: np.random.Generator, *, left: bool, right: bool, fracture: bool,
                  fracture_rng: np.random.Generator | None = None) -> HeadFindings:
    """Findings with a haemorrhage in each requested hemisphere and, if asked, a calvarial
    fracture (on the side of a bleed when there is one: one blow causes both). The fracture is
    drawn from ``fracture_rng`` (default ``rng``), so a cohort can give it a stream of its own."""
    haemorrhages = tuple(draw_haemorrhage(rng, side) for side, wanted in zip(SIDES, (left, right)) if wanted)
    # Drawn from ``rng`` with or without a fracture, as generator version 1 did: the draws that
    # follow (the readers') stay those of version 1.
    fracture_side = haemorrhages[0].side if haemorrhages else SIDES[int(rng.integers(2))]
    if not fracture:
        return HeadFindings(haemorrhages)
    return HeadFindings(haemorrhages, draw_fracture(rng if fracture_rng is None else fracture_rng, fracture_side))


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


def draw_fracture(rng: np.random.Generator, side: str, kind: str | None = None) -> Fracture:
    """A calvarial fracture in the vault over the ``side`` ("left", "right") hemisphere, of
    ``kind`` (``FRACTURE_KINDS``; default: linear two times in four, depressed and multiple once
    each, as linear fractures are the most common)."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}; got {side!r}")
    if kind is None:
        kind = FRACTURE_KINDS[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
    elif kind not in FRACTURE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(FRACTURE_KINDS)}; got {kind!r}")
    anatomy = placement_anatomy()
    x, _, z = placement_points()
    lateral = x if side == "right" else -x
    middle_of_skull = EXTRA_AXIAL_CSF_MM + DEFAULT_SKULL_MM / 2
    # The calvaria: the vault above the skull base, on the requested side.
    allowed = (np.abs(anatomy.distance - middle_of_skull) < 2.0) & (lateral > 10) & (z > 20)
    impact = np.asarray(draw_point(rng, allowed, "calvarial fracture"))
    outward = _skull_normal(impact)
    # Two directions along the skull at the impact.
    first = np.cross(outward, [0.0, 0.0, 1.0] if abs(outward[2]) < 0.9 else [1.0, 0.0, 0.0])
    first /= np.linalg.norm(first)
    second = np.cross(outward, first)

    def line(start: np.ndarray, angle: float, length: float, through: bool) -> FractureLine:
        """A line along the skull in direction ``angle``: centred on ``start`` when ``through``,
        else starting there."""
        direction = np.cos(angle) * first + np.sin(angle) * second
        centre = start if through else start + direction * length / 2
        return FractureLine(
            centre_mm=tuple(float(c) for c in centre),
            normal=tuple(float(n) for n in np.cross(outward, direction)),
            length_mm=float(length),
            width_mm=float(rng.uniform(*FRACTURE_WIDTH_MM)),
            seed=int(rng.integers(2**31)),
        )

    fragment_radius = ring_width = depression = 0.0
    if kind == "linear":
        lines = (line(impact, rng.uniform(0, np.pi), rng.uniform(30.0, 80.0), through=True),)
    elif kind == "multiple":
        count = int(rng.integers(2, 5))
        angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * (np.arange(count) + rng.uniform(-0.2, 0.2, count)) / count
        lines = tuple(line(impact, angle, rng.uniform(20.0, 50.0), through=False) for angle in angles)
    else:
        fragment_radius = float(rng.uniform(10.0, 20.0))
        ring_width = float(rng.uniform(*FRACTURE_WIDTH_MM))
        depression = float(rng.uniform(2.0, 6.0))
        angles = rng.uniform(0, 2 * np.pi, int(rng.integers(0, 3)))
        lines = tuple(
            line(impact + fragment_radius * (np.cos(a) * first + np.sin(a) * second), a, rng.uniform(15.0, 40.0),
                 through=False)
            for a in angles
        )
    return Fracture(
        kind=kind,
        impact_mm=tuple(float(c) for c in impact),
        outward=tuple(float(n) for n in outward),
        lines=lines,
        fragment_radius_mm=fragment_radius,
        ring_width_mm=ring_width,
        depression_mm=depression,
        swelling_mm=float(rng.uniform(3.0, 10.0)),
        swelling_radius_mm=float(rng.uniform(25.0, 45.0)),
        seed=int(rng.integers(2**31)),
    )


def _skull_normal(point_mm: np.ndarray) -> np.ndarray:
    """The skull's outward unit normal at a template point: the gradient of the distance to the
    brain's envelope, by central differences over 2 mm."""
    offsets = np.concatenate([np.eye(3), -np.eye(3)]) * 2.0
    _, _, distance = placement_anatomy().sample((point_mm + offsets).astype(np.float32))
    gradient = distance[:3] - distance[3:]
    return gradient / np.linalg.norm(gradient)


def render_ct(subject: Subject, findings: HeadFindings, shape: int = 96) -> CTScan:
    """The subject's head CT with ``findings`` on a ``shape``^3 grid of ``ADULT_FOV_MM``."""
    grid = subject_grid(subject, shape, ADULT_FOV_MM)
    grey, white, distance = template_anatomy(shape, ADULT_FOV_MM).sample(grid.points_mm)
    injury = None if findings.fracture is None else _fracture_fields(findings.fracture, grid.points_mm, grid.ramp_mm)
    head = compose_head(grey, white, distance, skull_mm=subject.skull_mm, ramp_mm=grid.ramp_mm,
                        depression_mm=None if injury is None else injury.depression_mm,
                        swelling_mm=None if injury is None else injury.swelling_mm)

    # Blood's share of the intracranial contents, and its density.
    blood = np.zeros_like(distance)
    blood_hu = np.zeros_like(distance)
    for haemorrhage in findings.haemorrhages:
        block = block_around(grid.points_mm, haemorrhage.centre_mm, _reach_mm(haemorrhage) + grid.ramp_mm)
        share = _haemorrhage_share(haemorrhage, grid.points_mm[block], distance[block], grid.ramp_mm)
        blood[block] = np.maximum(blood[block], share)
        blood_hu[block] = np.where(share > 0, np.float32(haemorrhage.density_hu), blood_hu[block])
    # The fracture lines' share of the bone.
    gap = np.zeros_like(distance) if injury is None else injury.gap

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
    if injury is not None:
        mask[injury.marked & (bone > 0.5)] = MASK_LABELS["fracture"]
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


class FractureFields(NamedTuple):
    """A fracture on a grid: ``gap``, the share of each voxel's bone that the fracture lines
    remove; ``depression_mm`` and ``swelling_mm``, for `compose_head`; ``marked``, the voxels its
    mask holds (the lines, at least one voxel wide, and the depressed fragment)."""

    gap: np.ndarray
    depression_mm: np.ndarray
    swelling_mm: np.ndarray
    marked: np.ndarray


def _fracture_fields(fracture: Fracture, points: np.ndarray, ramp_mm: float) -> FractureFields:
    """The fracture's fields on the grid of ``points`` (D, H, W, 3), computed on the block that
    the fracture can reach."""
    impact = np.asarray(fracture.impact_mm, dtype=np.float32)
    reach = max([fracture.fragment_radius_mm + fracture.ring_width_mm, fracture.swelling_radius_mm,
                 -_FRACTURE_DEPTH_MM[0]]
                + [float(np.linalg.norm(np.subtract(line.centre_mm, impact))) + line.length_mm / 2 + line.width_mm
                   for line in fracture.lines])
    block = block_around(points, fracture.impact_mm, reach + 2 * ramp_mm + 3 * _JAG_MM)
    grid_fields = FractureFields(*(np.zeros(points.shape[:-1], dtype=dtype) for dtype in [np.float32] * 3 + [bool]))
    points = points[block]
    fields = FractureFields(*(field[block] for field in grid_fields))  # views: writing them fills the grid's

    outward = np.asarray(fracture.outward, dtype=np.float32)
    depth = (points - impact) @ outward
    # Near the impact only: a line's plane passes through the head and must not cut the far side.
    inward_limit, outward_limit = (np.float32(limit) for limit in _FRACTURE_DEPTH_MM)
    window = ramp(depth - inward_limit, ramp_mm) * ramp(outward_limit - depth, ramp_mm)
    near = window > 0.5
    for line in fracture.lines:
        offset = points - np.asarray(line.centre_mm, dtype=np.float32)
        normal = np.asarray(line.normal, dtype=np.float32)
        across = offset @ normal + np.float32(_JAG_MM) * lattice_noise(line.seed, 8.0, points)
        along = offset @ np.cross(normal, outward)
        share = _slab(across, line.width_mm, ramp_mm) * ramp(line.length_mm / 2 - np.abs(along), ramp_mm) * window
        np.maximum(fields.gap, share, out=fields.gap)
        fields.marked[(np.abs(across) <= max(line.width_mm, ramp_mm) / 2) & (np.abs(along) <= line.length_mm / 2)
                      & near] = True
    # Distance from the impact along the skull (from the line through it along ``outward``).
    along_skull = np.linalg.norm(points - impact - depth[..., None] * outward, axis=-1)
    if fracture.kind == "depressed":
        outline = fracture.fragment_radius_mm + np.float32(_JAG_MM) * lattice_noise(fracture.seed, 8.0, points)
        across = along_skull - outline
        np.maximum(fields.gap, _slab(across, fracture.ring_width_mm, ramp_mm) * window, out=fields.gap)
        fragment = ramp(-across, ramp_mm) * window
        fields.depression_mm[...] = fracture.depression_mm * fragment
        fields.marked[(np.abs(across) <= max(fracture.ring_width_mm, ramp_mm) / 2) & near] = True
        fields.marked[fragment > 0.5] = True
    taper = np.clip(1 - (along_skull / np.float32(fracture.swelling_radius_mm)) ** 2, 0, 1) ** 2
    fields.swelling_mm[...] = fracture.swelling_mm * taper * window
    return grid_fields


def _slab(across_mm: np.ndarray, width_mm: float, voxel_mm: float) -> np.ndarray:
    """The share of a voxel ``voxel_mm`` wide, centred ``across_mm`` from the middle of a slab
    ``width_mm`` wide, that the slab covers: a line thinner than a voxel dims one voxel by its
    share, instead of vanishing or being widened to a voxel."""
    half_width, half_voxel = np.float32(width_mm / 2), np.float32(voxel_mm / 2)
    overlap = np.minimum(across_mm + half_voxel, half_width) - np.maximum(across_mm - half_voxel, -half_width)
    return np.clip(overlap, 0, None) / np.float32(voxel_mm)
