"""Synthetic BraTS2020 cohorts (docs/data-layouts.md): one ``BraTS20_Training_XXX`` folder per
subject with its four contrasts and label map."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainkernels.data.synth.grid import ADULT_FOV_MM
from brainkernels.data.synth.mr import Tumour, draw_tumour, render_brats
from brainkernels.data.synth.subject import Subject, draw_subject
from brainkernels.data.synth.writing import CohortLayout, random_stream
from brainkernels.data.volume import save_nifti

_SUBJECT = 0


def plan(subjects: int, seed: int) -> list[dict]:
    records = []
    for index in range(subjects):
        rng = random_stream(seed, _SUBJECT, index)
        subject = draw_subject(int(rng.integers(2**31)))
        records.append({
            "name": f"BraTS20_Training_{index + 1:03d}",
            "identity": subject.to_dict(),
            "tumour": draw_tumour(rng).to_dict(),
        })
    return records


def write_subject(root: Path, record: dict, shape: int) -> None:
    name = record["name"]
    scan = render_brats(Subject.from_dict(record["identity"]), Tumour.from_dict(record["tumour"]), shape)
    for modality, image in scan.images.items():
        save_nifti(image, root / name / f"{name}_{modality}.nii.gz")
    save_nifti(scan.seg, root / name / f"{name}_seg.nii.gz", dtype=np.uint8)


def write_tables(root: Path, records: list[dict], shape: int) -> None:
    """BraTS has no table the loaders need."""


LAYOUT = CohortLayout(
    kind="brats",
    fov_mm=ADULT_FOV_MM,
    plan=plan,
    write_subject=write_subject,
    write_tables=write_tables,
    entries=("BraTS20_Training_*",),
)
