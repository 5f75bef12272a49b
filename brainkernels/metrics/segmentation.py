"""Overlap and surface-distance scores of binary segmentations: Dice and the 95th-percentile
Hausdorff distance in mm (as BraTS and MONAI's ``compute_hausdorff_distance(percentile=95)``
define it; the tests check the numbers against MONAI).

Empty masks: Dice is 1 when both masks are empty and 0 when only one is; HD95 is 0 when both are
empty and undefined (NaN, printed with its reason) when only one is (no surface to measure from).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from brainkernels.metrics.undefined import Undefined


def _binary(mask, name: str) -> np.ndarray:
    array = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3D mask; got shape {array.shape}")
    return array.astype(bool)


def dice(prediction, truth) -> float:
    """2 |P n T| / (|P| + |T|)."""
    p, t = _binary(prediction, "prediction"), _binary(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    total = p.sum() + t.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(p, t).sum() / total)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))


def hausdorff95(prediction, truth, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th percentile of the distances (mm) from each surface voxel of one mask to the surface of
    the other, both directions pooled per direction and the larger of the two percentiles taken."""
    p, t = _binary(prediction, "prediction"), _binary(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return Undefined("one mask is empty")
    surface_p, surface_t = _surface(p), _surface(t)
    to_t = ndimage.distance_transform_edt(~surface_t, sampling=spacing)
    to_p = ndimage.distance_transform_edt(~surface_p, sampling=spacing)
    return float(max(np.percentile(to_t[surface_p], 95), np.percentile(to_p[surface_t], 95)))
