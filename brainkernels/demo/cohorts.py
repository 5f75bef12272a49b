"""The demo's synthetic cohorts, written with the same generator as ``brainkernels synth``."""

from __future__ import annotations

from pathlib import Path

from brainkernels.data.synth.cohort import write_cohort
from brainkernels.demo.settings import Cohort
from brainkernels.runtime.progress import progress


def synthesise(kind: str, cohort: Cohort, out: Path, quiet: bool) -> Path:
    write_cohort(kind, out, subjects=cohort.subjects, shape=cohort.shape, seed=cohort.seed, overwrite=True,
                 rescanned=cohort.rescanned,
                 progress=lambda records: progress(records, desc=f"synth {kind}", unit="subject", quiet=quiet))
    return out


def command(kind: str, cohort: Cohort, out: str) -> str:
    """The ``brainkernels synth`` line that writes the same cohort."""
    rescanned = f" --rescanned {cohort.rescanned:g}" if cohort.rescanned is not None else ""
    return (f"brainkernels synth {kind} --out {out} --subjects {cohort.subjects} --shape {cohort.shape} "
            f"--seed {cohort.seed}{rescanned}")
