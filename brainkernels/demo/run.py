"""Run the demo: cohorts, the three methods, the memory table, and the report."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

import torch

import brainkernels
from brainkernels.demo import inr, memory, patchddm, ppr
from brainkernels.demo.report import Section, write_report
from brainkernels.demo.settings import DEFAULT, DemoSettings
from brainkernels.demo.stages import Stages
from brainkernels.errors import BrainkernelsError
from brainkernels.runtime.distributed import pick_device

METHODS = {"PPR": ppr.run, "PatchDDM": patchddm.run, "INR": inr.run}
OUTPUTS = ("data", "ppr", "patchddm", "inr", "memory", "report.md", "report.html")
TITLE = "brainkernels demo"


def _prepare(out: Path, overwrite: bool) -> None:
    """``out`` must be new or empty, or hold an earlier demo that ``overwrite`` replaces."""
    if out.exists() and not out.is_dir():
        raise BrainkernelsError(f"--out {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise BrainkernelsError(f"--out {out}: the folder is not empty; give a new folder or --overwrite "
                                    "(replaces an earlier demo's outputs there)")
        for name in OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _overview(settings: DemoSettings, device: torch.device) -> Section:
    section = Section("What this is")
    section.text("brainkernels runs three memory-efficient methods for 3D brain imaging (Bieder et al., University "
                 "of Basel, 2022-2024) on ordinary hardware: PPR (anomaly detection in head CT by patch position "
                 "regression), PatchDDM (tumour segmentation with a 3D diffusion model trained on patches) and an "
                 "INR auto-decoder (neonatal brain development across age).")
    section.text("The data are synthetic: every cohort below was generated from the MNI152 2009 template that ships "
                 "with nilearn (head CT with haemorrhages and fractures, four-sequence MR with tumours, neonatal T2 at "
                 "26-45 weeks), with known ground truth, in the layouts of the real data sets: CQ500 (head CT, "
                 "qure.ai), BraTS 2020 (brain tumour MR) and the developing Human Connectome Project (dHCP, neonatal "
                 "MR). The same commands run on those data sets once downloaded (docs/data-layouts.md); the numbers "
                 "here are for the synthetic cohorts, not the papers' results.")
    section.text("Each method first shows the model shipped with brainkernels (trained on synthetic data only: not "
                 "for clinical use, not for real scans) on a cohort generated now with a seed its training never "
                 "saw, then trains a model from scratch.")
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    section.text(f"Level: {settings.level} (`brainkernels demo{' --quick' if settings.level == 'quick' else ''}`). "
                 + ("The models trained from scratch are small and briefly trained, to show training at work; "
                    "`brainkernels demo` without --quick trains longer and evaluates them. "
                    if settings.level == "quick" else "")
                 + f"Device: {device} ({hardware}, {os.cpu_count()} CPU cores); brainkernels "
                 f"{brainkernels.__version__}, PyTorch {torch.__version__}.")
    return section


def _settings_section(settings: DemoSettings, stages: Stages, started: float) -> Section:
    section = Section("Settings and wall time")
    section.table(("stage", "wall time (s)"), [(name, f"{seconds:.0f}") for name, seconds in stages.seconds.items()]
                  + [("total", f"{time.perf_counter() - started:.0f}")])
    for name in ("ppr", "patchddm", "inr"):
        config = getattr(settings, name)
        section.text(f"{name}: " + ", ".join(f"{key}={value}" for key, value in vars(config).items()))
    return section


def run_demo(out: str | os.PathLike, settings: DemoSettings = DEFAULT, *, device: str = "auto",
             overwrite: bool = False, quiet: bool = False, debug: bool = False) -> Path:
    """Run the demo at ``settings`` (QUICK or DEFAULT of ``brainkernels.demo.settings``) into ``out``;
    returns the path of report.html. A method that fails is reported in its section (with the error)
    and the others still run (``debug``: with its traceback); the error is raised after the report
    is written."""
    out = Path(out)
    settings = settings.on_device(device)
    chosen = pick_device(device)
    _prepare(out, overwrite)
    started, stages = time.perf_counter(), Stages(quiet)
    sections, failures = [_overview(settings, chosen)], []
    for name, method in METHODS.items():
        try:
            sections.extend(method(settings, out, stages, quiet))
        except Exception as error:  # noqa: BLE001 - one method's failure must not hide the others' results
            if debug:
                traceback.print_exc(file=sys.stderr)
            else:
                print(f"brainkernels demo: {name} failed: {error}", file=sys.stderr)
            failures.append(f"{name}: {error}")
            failed = Section(f"{name}: failed")
            failed.text(f"{type(error).__name__}: {error}")
            sections.append(failed)
    tables = memory.measure(stages)
    sections.append(memory.section(tables, out / "memory"))
    sections.append(_settings_section(settings, stages, started))
    _, report = write_report(out, TITLE, sections)
    if failures:
        raise BrainkernelsError(f"the demo finished with failures ({'; '.join(failures)}); see {report}")
    return report
