"""Synthetic CQ500-style head CT cohorts (docs/data-layouts.md): ``scans/``, ``masks/``,
``structures.nii.gz`` and ``reads.csv``.

Cases come in blocks of ten with a fixed mix, shuffled within each block: half healthy, and the
rest bleeds on the left, on the right, on both sides, a fracture alone and a fracture with a bleed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainkernels.data.synth.ct import HeadFindings, ct_structures, draw_findings, render_ct
from brainkernels.data.synth.grid import ADULT_FOV_MM
from brainkernels.data.synth.readers import COLUMNS, draw_reads
from brainkernels.data.synth.subject import Subject, draw_subject
from brainkernels.data.synth.writing import CohortLayout, random_stream, write_table
from brainkernels.data.volume import save_nifti

CASE_BLOCK = ("healthy",) * 5 + ("left", "right", "left+right", "fracture", "right+fracture")
CATEGORY = "synthetic"
"""Value of reads.csv's ``Category`` column (CQ500 uses it for its acquisition batches)."""
_SUBJECT, _CASES, _FRACTURE = 0, 1, 2


def plan(subjects: int, seed: int) -> list[dict]:
    records = []
    for index in range(subjects):
        block, position = divmod(index, len(CASE_BLOCK))
        case = CASE_BLOCK[random_stream(seed, _CASES, block).permutation(len(CASE_BLOCK))[position]]
        rng = random_stream(seed, _SUBJECT, index)
        subject = draw_subject(int(rng.integers(2**31)))
        # The fracture has a stream of its own: changing how fractures are drawn leaves every
        # other scan of a seed's cohort as it was.
        findings = draw_findings(rng, left="left" in case, right="right" in case, fracture="fracture" in case,
                                 fracture_rng=random_stream(seed, _FRACTURE, index))
        records.append({
            "name": f"SYNTH-CT-{index:03d}",
            "case": case,
            "identity": subject.to_dict(),
            "findings": findings.to_dict(),
            "reads": draw_reads(findings, rng),
        })
    return records


def finding_kinds(records: dict[str, dict]) -> dict[str, dict[str, str]]:
    """Per scan (cohort.json's records by name), the kind of each finding by the label it counts
    for: ``left_bleed`` and ``right_bleed`` (``HAEMORRHAGE_KINDS``), ``fracture``
    (``FRACTURE_KINDS``)."""
    kinds = {}
    for name, record in records.items():
        findings = HeadFindings.from_dict(record["findings"])
        kinds[name] = {f"{h.side}_bleed": h.kind for h in findings.haemorrhages}
        if findings.fracture is not None:
            kinds[name]["fracture"] = findings.fracture.kind
    return kinds


def write_subject(root: Path, record: dict, shape: int) -> None:
    scan = render_ct(Subject.from_dict(record["identity"]), HeadFindings.from_dict(record["findings"]), shape)
    save_nifti(scan.image, root / "scans" / f"{record['name']}.nii.gz", dtype=np.int16)
    save_nifti(scan.mask, root / "masks" / f"{record['name']}.nii.gz", dtype=np.uint8)


def write_tables(root: Path, records: list[dict], shape: int) -> None:
    rows = [{"name": record["name"], "Category": CATEGORY, **record["reads"]} for record in records]
    write_table(root / "reads.csv", ("name", "Category", *COLUMNS), rows, delimiter=",")
    save_nifti(ct_structures(shape), root / "structures.nii.gz", dtype=np.uint8)


LAYOUT = CohortLayout(
    kind="cq500",
    fov_mm=ADULT_FOV_MM,
    plan=plan,
    write_subject=write_subject,
    write_tables=write_tables,
    entries=("reads.csv", "scans", "masks", "structures.nii.gz"),
)
