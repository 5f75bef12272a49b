"""Write a synthetic cohort in one of the three layouts, with ``cohort.json`` recording how every
subject was drawn, and read that record back to regenerate any subject."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import brainkernels
from brainkernels.atomic import atomic_path
from brainkernels.data.synth import brats, cq500, dhcp
from brainkernels.data.synth.subject import Subject
from brainkernels.data.synth.writing import CohortLayout
from brainkernels.data.volume import check_voxel_count

GENERATOR = "brainkernels.data.synth"
GENERATOR_VERSION = 2
"""Raised whenever a seed's cohort changes. 2: calvarial fractures of three kinds (linear,
depressed, multiple) with physical widths and scalp swelling; every other scan is as in 1."""
LAYOUTS: dict[str, CohortLayout] = {layout.kind: layout for layout in (cq500.LAYOUT, brats.LAYOUT, dhcp.LAYOUT)}
KINDS = tuple(LAYOUTS)
COHORT_FILE = "cohort.json"
TEMPLATE = "MNI ICBM152 2009a nonlinear symmetric, grey and white matter, 1 mm (nilearn package data)"


@dataclass(frozen=True)
class SynthCohort:
    """What ``cohort.json`` records: the arguments a cohort was written with and, per subject
    (by name), its identity and its kind's ground truth (``findings``, ``tumour`` or
    ``sessions``)."""

    kind: str
    seed: int
    shape: int
    fov_mm: float
    records: dict[str, dict]

    def subject(self, name: str) -> Subject:
        if name not in self.records:
            raise KeyError(f"no subject named {name!r} in this {self.kind} cohort; it has {', '.join(self.records)}")
        return Subject.from_dict(self.records[name]["identity"])


def write_cohort(
    kind: str,
    out: str | Path,
    *,
    subjects: int,
    shape: int = 96,
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[Iterable[dict]], Iterable[dict]] | None = None,
    rescanned: float | None = None,
) -> Path:
    """Write a cohort of ``subjects`` subjects of ``kind`` (cq500, brats, dhcp) on a ``shape``^3
    grid into the folder ``out``, reproducibly from ``seed``; return the path of its cohort.json.

    A non-empty ``out`` is refused unless ``overwrite``, which first removes what any synthetic
    cohort consists of (other files stay). ``progress`` wraps the loop over subjects (a progress
    bar). The cohort is written into a hidden folder in ``out`` and moved into place once complete
    (cohort.json last), so a failure leaves none of it behind. ``rescanned``
    (dhcp only, default 0.1 as in the dHCP): the share of babies scanned more than once; the INR's
    evaluation and its SSL need such longitudinal subjects.
    """
    if kind not in LAYOUTS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if not isinstance(subjects, int) or subjects < 1:
        raise ValueError(f"subjects must be a positive integer; got {subjects!r}")
    if not isinstance(shape, int) or shape < 16:
        raise ValueError(f"shape must be an integer of at least 16 voxels per side; got {shape!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    options = {}
    if rescanned is not None:
        if kind != "dhcp":
            raise ValueError(f"rescanned applies to dhcp cohorts only, not {kind}")
        if not 0 <= rescanned <= 1:
            raise ValueError(f"rescanned must be a share between 0 and 1; got {rescanned!r}")
        options["rescanned"] = float(rescanned)
    check_voxel_count((shape,) * 3, "shape")
    root = Path(out)
    created = not root.exists()
    _prepare_folder(root, overwrite)
    # Written into a hidden folder inside ``root`` (readers pass over hidden entries) and moved into
    # place at the end, so that a full disk or an interruption leaves no partial cohort.
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=".synth-", dir=root))
        _write(kind, staging, subjects, shape, seed, options, progress)
        for entry in sorted(staging.iterdir(), key=lambda entry: entry.name == COHORT_FILE):  # cohort.json last
            os.replace(entry, root / entry.name)
        staging.rmdir()
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if created and not any(root.iterdir()):
            root.rmdir()
        raise
    return root / COHORT_FILE


def _write(kind: str, root: Path, subjects: int, shape: int, seed: int, options: dict,
           progress: Callable[[Iterable[dict]], Iterable[dict]] | None) -> None:
    layout = LAYOUTS[kind]
    records = layout.plan(subjects, seed, **options)
    for record in progress(records) if progress is not None else records:
        layout.write_subject(root, record, shape)
    layout.write_tables(root, records, shape)
    description = {
        "generator": GENERATOR,
        "version": brainkernels.__version__,
        "generator_version": GENERATOR_VERSION,
        "kind": kind,
        "seed": seed,
        "shape": [shape, shape, shape],
        "fov_mm": layout.fov_mm,
        "template": TEMPLATE,
        "subjects": records,
    }
    with atomic_path(root / COHORT_FILE) as temporary:
        temporary.write_text(json.dumps(description, indent=1) + "\n")


def read_cohort(root: str | Path) -> SynthCohort:
    """The record of the synthetic cohort in ``root`` (from its cohort.json)."""
    path = Path(root) / COHORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (not a synthetic cohort, or one not finished)")
    try:
        description = json.loads(path.read_text())
        if description.get("generator") != GENERATOR:
            raise ValueError(f"written by {description.get('generator')!r}, not {GENERATOR}")
        return SynthCohort(
            kind=description["kind"],
            seed=description["seed"],
            shape=description["shape"][0],
            fov_mm=description["fov_mm"],
            records={record["name"]: record for record in description["subjects"]},
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a synthetic cohort description ({error})") from error


def _prepare_folder(root: Path, overwrite: bool) -> None:
    """An empty folder at ``root``, or with ``overwrite`` one cleared of every synthetic layout's
    entries, so that no subject of an earlier, larger cohort lingers."""
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root}: exists and is not a folder")
    existing = sorted(root.iterdir()) if root.is_dir() else []
    if existing and not overwrite:
        raise FileExistsError(
            f"{root}: folder is not empty ({len(existing)} entries, e.g. {existing[0].name}); "
            "choose an empty folder, or overwrite"
        )
    for pattern in (COHORT_FILE, ".synth-*", *(entry for layout in LAYOUTS.values() for entry in layout.entries)):
        for entry in root.glob(pattern):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    root.mkdir(parents=True, exist_ok=True)
