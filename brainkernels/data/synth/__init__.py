"""Synthetic cohorts with known ground truth, made from the MNI152 2009 template that ships with
nilearn: head CT with haemorrhages and fractures (CQ500 layout), multi-contrast MR with tumours
(BraTS layout) and neonatal T2 MR at any age from 26 to 45 weeks (dHCP/BIDS layout).

Everything is reproducible from seeds: a `Subject` (pose, deformation, texture, skull, contrast)
is drawn from one integer, and a cohort from one seed. Names are imported on first use, so
importing this package (as the CLI does) loads neither scipy nor nilearn.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "brainkernels.data.synth.subject": ("Subject", "draw_subject"),
    "brainkernels.data.synth.ct": (
        "FRACTURE_KINDS", "Fracture", "FractureLine", "Haemorrhage", "HeadFindings", "CTScan", "ct_structures",
        "draw_findings", "draw_fracture",
        "draw_haemorrhage", "render_ct",
    ),
    "brainkernels.data.synth.mr": ("BraTSScan", "Tumour", "draw_tumour", "render_brats"),
    "brainkernels.data.synth.neonatal": ("NeonatalScan", "head_circumference_cm", "render_neonate"),
    "brainkernels.data.synth.anatomy": ("measure_circumference_mm", "template_anatomy"),
    "brainkernels.data.synth.readers": ("draw_reads",),
    "brainkernels.data.synth.cohort": ("KINDS", "SynthCohort", "read_cohort", "write_cohort"),
    "brainkernels.data.synth.figures": ("write_figures",),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
