"""Synthetic radiologists: three readers' CQ500-style reports of a scan whose findings are known.

Each reader reports the truth, except that for each of the three structure labels (left bleed,
right bleed, fracture) one reader, now and then, dissents. At most one reader dissents per label,
so the majority vote, which is how the PPR paper turns the reads into labels, always recovers
the truth, while the columns hold the kind of disagreement real reads have (CQ500's Fleiss'
kappa is 0.6-0.75 for these labels).
"""

from __future__ import annotations

import numpy as np

from brainkernels.data.synth.ct import HeadFindings

READERS = ("R1", "R2", "R3")
FINDINGS = (
    "ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left", "BleedLocation-Right",
    "ChronicBleed", "Fracture", "CalvarialFracture", "OtherFracture", "MassEffect", "MidlineShift",
)  # fmt: skip
"""CQ500's per-reader columns, in the order of its reads.csv."""
COLUMNS = tuple(f"{reader}:{finding}" for reader in READERS for finding in FINDINGS)

DISSENT_PROBABILITY = 0.12
"""Chance, per scan and structure label, that one reader disagrees with the other two."""
_MASS_EFFECT_MM = 15.0
"""A haemorrhage whose largest radius reaches this is reported with mass effect."""
_MIDLINE_SHIFT_MM = 30.0


def draw_reads(findings: HeadFindings, rng: np.random.Generator) -> dict[str, int]:
    """The three readers' columns (``COLUMNS``, values 0/1) for a scan with ``findings``."""
    truth = {"left": findings.left_bleed, "right": findings.right_bleed, "fracture": findings.fracture is not None}
    dissenter = {
        label: int(rng.integers(len(READERS))) if rng.random() < DISSENT_PROBABILITY else None for label in truth
    }
    kinds = {h.kind for h in findings.haemorrhages}
    largest = max((max(h.radii_mm) for h in findings.haemorrhages), default=0.0)
    reads = {}
    for index, reader in enumerate(READERS):
        seen = {label: value != (dissenter[label] == index) for label, value in truth.items()}
        bleed = seen["left"] or seen["right"]
        # A bleed the reader imagines is called intraparenchymal; one they miss has no subtype.
        imagined = bleed and not (findings.left_bleed or findings.right_bleed)
        report = {
            "ICH": bleed,
            "IPH": bleed and ("intraparenchymal" in kinds or imagined),
            "IVH": False,
            "SDH": bleed and "subdural" in kinds,
            "EDH": False,
            "SAH": False,
            "BleedLocation-Left": seen["left"],
            "BleedLocation-Right": seen["right"],
            "ChronicBleed": False,
            "Fracture": seen["fracture"],
            "CalvarialFracture": seen["fracture"],
            "OtherFracture": False,
            "MassEffect": bleed and largest >= _MASS_EFFECT_MM,
            "MidlineShift": bleed and largest >= _MIDLINE_SHIFT_MM,
        }
        reads.update({f"{reader}:{finding}": int(report[finding]) for finding in FINDINGS})
    return reads
