"""Slice figures shared by the methods: three orthogonal slices through a point, an optional
overlay (anomaly map, uncertainty) and optional label contours, written as PNG.

Volumes are (D, H, W) in RAS orientation (D: left->right, H: posterior->anterior,
W: inferior->superior), so slices are shown in radiological-free "neurological" convention:
the subject's right on the right of the image, anterior/superior up.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from brainkernels.data.atomic import atomic_path  # noqa: E402

VIEWS = ("axial", "coronal", "sagittal")


def _slice(volume: np.ndarray, view: str, point: Sequence[int]) -> np.ndarray:
    """The 2D slice through ``point``, transposed so that rows run top (anterior/superior) to bottom."""
    d, h, w = point
    plane = {"axial": volume[:, :, w], "coronal": volume[:, h, :], "sagittal": volume[d, :, :]}[view]
    return np.flipud(plane.T)


def _numpy(array) -> np.ndarray:
    return array.detach().float().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array, dtype=float)


def orthogonal_slices(image, *, point: Sequence[int] | None = None, overlay=None, contours=None,
                      title: str = "", overlay_label: str = "", image_range: tuple[float, float] | None = None,
                      overlay_range: tuple[float, float] | None = None, cmap: str = "hot") -> plt.Figure:
    """A figure with the axial, coronal and sagittal slices of ``image`` (D, H, W) through ``point``
    (default: the centre), ``overlay`` blended in colour and ``contours`` (a label map) outlined."""
    image = _numpy(image)
    point = tuple(int(p) for p in (point if point is not None else np.array(image.shape) // 2))
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4), facecolor="black")
    low, high = image_range if image_range is not None else np.percentile(image, [1, 99.5])
    overlay = _numpy(overlay) if overlay is not None else None
    if overlay is not None and overlay_range is None:
        overlay_range = (float(np.percentile(overlay, 50)), float(overlay.max()) or 1.0)
    for axis, view in zip(axes, VIEWS):
        axis.imshow(_slice(image, view, point), cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        if overlay is not None:
            shown = np.ma.masked_less(_slice(overlay, view, point), overlay_range[0])
            mappable = axis.imshow(shown, cmap=cmap, vmin=overlay_range[0], vmax=overlay_range[1], alpha=0.6,
                                   interpolation="nearest")
        if contours is not None:
            labels = _slice(_numpy(contours), view, point)
            for value in np.unique(labels[labels > 0]):
                axis.contour(labels == value, levels=[0.5], colors=[plt.cm.tab10(int(value) % 10)], linewidths=1)
        axis.set_title(view, color="white")
        axis.axis("off")
    if overlay is not None:
        bar = figure.colorbar(mappable, ax=axes, fraction=0.02, pad=0.01)
        bar.set_label(overlay_label, color="white")
        bar.ax.tick_params(colors="white")
    if title:
        figure.suptitle(title, color="white")
    return figure


def save_figure(figure: plt.Figure, path: str | os.PathLike) -> None:
    """Write ``figure`` as PNG (atomically) and release it."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100, facecolor=figure.get_facecolor(), bbox_inches="tight")
    plt.close(figure)
