"""Synthetic dHCP cohorts in BIDS (docs/data-layouts.md): ``participants.tsv`` and, per subject,
a sessions table with each scan's postmenstrual age, a T2-weighted scan and a brain mask.

As in the dHCP, about a quarter of the babies are born preterm (24-36 weeks) and the rest at term
(37-42 weeks); each is scanned soon after birth and about one in ten again, once or twice, up to
45 weeks; preterm babies scanned once are as often scanned at term-equivalent age.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainkernels.data.synth.neonatal import AGE_RANGE_WEEKS, NEONATAL_FOV_MM, render_neonate
from brainkernels.data.synth.subject import Subject, draw_subject
from brainkernels.data.synth.writing import CohortLayout, random_stream, write_table
from brainkernels.data.volume import save_nifti

RESCANNED = 0.1  # share of babies scanned more than once, about as in the dHCP release
_SUBJECT = 0


def plan(subjects: int, seed: int, rescanned: float = RESCANNED) -> list[dict]:
    records = []
    for index in range(subjects):
        rng = random_stream(seed, _SUBJECT, index)
        subject = draw_subject(int(rng.integers(2**31)))
        birth_age, ages = _draw_ages(rng, rescanned)
        records.append({
            "name": f"SYN{index + 1:03d}",
            "identity": subject.to_dict(),
            "birth_age": birth_age,
            "sex": "female" if rng.random() < 0.5 else "male",
            "sessions": [{"session_id": str(number), "scan_age": age} for number, age in enumerate(ages, start=1)],
        })
    return records


def write_subject(root: Path, record: dict, shape: int) -> None:
    subject = Subject.from_dict(record["identity"])
    participant = f"sub-{record['name']}"
    for session in record["sessions"]:
        scan = render_neonate(subject, session["scan_age"], shape)
        stem = f"{participant}_ses-{session['session_id']}"
        anat = root / participant / f"ses-{session['session_id']}" / "anat"
        save_nifti(scan.t2, anat / f"{stem}_T2w.nii.gz")
        save_nifti(scan.brain_mask, anat / f"{stem}_desc-brain_mask.nii.gz", dtype=np.uint8)


def write_tables(root: Path, records: list[dict], shape: int) -> None:
    participants = [
        {"participant_id": f"sub-{r['name']}", "birth_age": r["birth_age"], "sex": r["sex"]} for r in records
    ]
    write_table(root / "participants.tsv", ("participant_id", "birth_age", "sex"), participants, delimiter="\t")
    for record in records:
        participant = f"sub-{record['name']}"
        sessions = [{"session_id": f"ses-{s['session_id']}", "scan_age": s["scan_age"]} for s in record["sessions"]]
        path = root / participant / f"{participant}_sessions.tsv"
        write_table(path, ("session_id", "scan_age"), sessions, delimiter="\t")


def _draw_ages(rng: np.random.Generator, rescanned: float) -> tuple[float, list[float]]:
    """Birth age and the sorted scan ages (weeks, two decimals as in the dHCP tables)."""
    low, high = AGE_RANGE_WEEKS
    preterm = rng.random() < 0.25
    birth = rng.uniform(24.0, 36.0) if preterm else rng.uniform(37.0, 42.0)
    first = max(low, birth + rng.uniform(0.3, 2.5))
    if preterm and rng.random() < 0.5:
        first = rng.uniform(max(first, 38.0), 44.0)  # scanned once, at term-equivalent age
    ages = [first]
    if rng.random() < rescanned and first < high - 2:
        ages += sorted(rng.uniform(first + 1.0, high, int(rng.integers(1, 3))).tolist())
    return round(float(birth), 2), [round(float(min(age, high)), 2) for age in ages]


LAYOUT = CohortLayout(
    kind="dhcp",
    fov_mm=NEONATAL_FOV_MM,
    plan=plan,
    write_subject=write_subject,
    write_tables=write_tables,
    entries=("participants.tsv", "sub-*"),
)
