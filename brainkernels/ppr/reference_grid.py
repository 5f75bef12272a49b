"""The training cohort's footprint, kept in the run folder so detection can check that a new
scan lies on the same grid and roughly where the training anatomy was."""

from __future__ import annotations

import json
import warnings

import numpy as np

from brainkernels.atomic import atomic_path
from brainkernels.data.preprocess import Footprint, check_coregistration, foreground_footprint
from brainkernels.errors import BrainkernelsError
from brainkernels.runtime import RunFolder

FILE = "training_footprints.json"


def save_footprints(run: RunFolder, scans) -> None:
    rows = [{"name": footprint.name, "shape": list(footprint.shape), "affine": footprint.affine.tolist(),
             "centroid_mm": footprint.centroid_mm.tolist(), "extent_mm": footprint.extent_mm.tolist()}
            for footprint in (foreground_footprint(scan.volume, scan.mask, name=scan.name) for scan in scans)]
    with atomic_path(run.root / FILE) as temporary:
        temporary.write_text(json.dumps(rows))


def load_footprints(run: RunFolder) -> list[Footprint]:
    path = run.root / FILE
    if not path.is_file():
        raise BrainkernelsError(f"{run.root}: no {FILE} (not a PPR run folder)")
    return [Footprint(row["name"], tuple(row["shape"]), np.array(row["affine"]), np.array(row["centroid_mm"]),
                      np.array(row["extent_mm"])) for row in json.loads(path.read_text())]


def check_scan(training: list[Footprint], scan) -> str | None:
    """Raise if ``scan`` is on another grid than the model was trained on; return a warning
    message when its anatomy is far from the training cohort's."""
    if scan.volume.shape != training[0].shape:
        raise BrainkernelsError(f"{scan.name}: shape {scan.volume.shape} differs from the training grid "
                                f"{training[0].shape}; PPR needs scans co-registered to the training grid")
    footprint = foreground_footprint(scan.volume, scan.mask, name=scan.name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flagged = check_coregistration([*training, footprint])
    if scan.name in flagged:
        return next(str(w.message) for w in caught if str(w.message).startswith(scan.name))
    return None
