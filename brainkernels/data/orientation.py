"""How slices of a RAS volume (D: left->right, H: posterior->anterior, W: inferior->superior) are
shown in every figure: neurological convention, the subject's right on the right of the image,
anterior (axial) or superior (coronal, sagittal) up, and a letter at each edge that says so."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

VIEWS = ("axial", "coronal", "sagittal")
CONVENTION = "neurological convention: the subject's right on the right of the image"
EDGE_LETTERS = {  # (left, right, top, bottom) edge of an upright slice
    "axial": ("L", "R", "A", "P"),
    "coronal": ("L", "R", "S", "I"),
    "sagittal": ("P", "A", "S", "I"),
}


def upright(plane: np.ndarray) -> np.ndarray:
    """A RAS plane (horizontal axis first) as image rows, top row anterior or superior."""
    return np.flipud(np.asarray(plane).T)


def upright_slice(volume: np.ndarray, view: str, point: Sequence[int]) -> np.ndarray:
    """The ``view`` slice of ``volume`` (D, H, W) through ``point``, upright."""
    d, h, w = (int(p) for p in point)
    return upright({"axial": volume[:, :, w], "coronal": volume[:, h, :], "sagittal": volume[d, :, :]}[view])


def mark_orientation(axis, view: str, colour: str = "yellow") -> None:
    """Write the edge letters of ``view`` inside the edges of the matplotlib ``axis``."""
    left, right, top, bottom = EDGE_LETTERS[view]
    for letter, x, y, horizontal, vertical in ((left, 0.01, 0.5, "left", "center"),
                                               (right, 0.99, 0.5, "right", "center"),
                                               (top, 0.5, 0.99, "center", "top"),
                                               (bottom, 0.5, 0.01, "center", "bottom")):
        axis.text(x, y, letter, transform=axis.transAxes, ha=horizontal, va=vertical, color=colour, fontsize=9,
                  fontweight="bold")
