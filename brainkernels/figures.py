"""Slice figures shared by the methods: three orthogonal slices through a point inside the head,
an optional overlay (anomaly map, probability, uncertainty) and optional outlines (segmentation,
ground truth), in neurological convention with R/L, A/P, S/I at the edges, written as PNG."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.lines import Line2D
from scipy import ndimage

from brainkernels.atomic import atomic_path
from brainkernels.data.orientation import VIEWS, mark_orientation, upright_slice

# Figures are written to files, never shown: the Agg backend needs no display (servers, CI,
# torchrun workers). Everything in brainkernels that plots imports pyplot from here.
matplotlib.use("Agg")

OUTLINE_COLOURS = ("tab:orange", "cyan", "tab:green", "magenta")
SMOOTHING = 5
"""Edge in voxels of the box the score is averaged over before its maximum is taken, so a single
stray voxel (at the skull base, say) does not decide where the slices cut."""


def _numpy(array) -> np.ndarray:
    return array.detach().float().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array, dtype=float)


def _nearest(region: np.ndarray, target: np.ndarray) -> tuple[int, int, int]:
    voxels = np.argwhere(region)
    return tuple(int(c) for c in voxels[np.argmin(((voxels - target) ** 2).sum(axis=1))])


def figure_point(head, *, truth=None, score=None) -> tuple[int, int, int]:
    """Where the slices cut, always a voxel of the ``head`` mask (D, H, W): the voxel of ``truth``
    (a mask) nearest its centre of mass when it is known and not empty, else the maximum of the
    smoothed ``score`` inside the head, else the head voxel nearest the head's centre."""
    head = _numpy(head) > 0
    if not head.any():
        raise ValueError("figure_point: the head mask is empty")
    if truth is not None and (inside := (_numpy(truth) > 0) & head).any():
        return _nearest(inside, np.array(ndimage.center_of_mass(inside)))
    if score is not None:
        smoothed = ndimage.uniform_filter(np.where(head, _numpy(score), 0.0), size=SMOOTHING)
        return tuple(int(c) for c in np.unravel_index(np.argmax(np.where(head, smoothed, -np.inf)), head.shape))
    return _nearest(head, np.array(ndimage.center_of_mass(head)))


def orthogonal_slices(image, *, point: Sequence[int], overlay=None, outlines: Mapping[str, object] | None = None,
                      title: str = "", overlay_label: str = "", image_range: tuple[float, float] | None = None,
                      overlay_range: tuple[float, float] | None = None, cmap: str = "hot") -> plt.Figure:
    """A figure with the axial, coronal and sagittal slices of ``image`` (D, H, W) through ``point``
    (see ``figure_point``), ``overlay`` blended in colour with its colour bar, and each mask of
    ``outlines`` (name: mask) outlined in its own colour, named in a legend."""
    image = _numpy(image)
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.6), facecolor="black")
    low, high = image_range if image_range is not None else np.percentile(image, [1, 99.5])
    overlay = _numpy(overlay) if overlay is not None else None
    if overlay is not None and overlay_range is None:
        overlay_range = (float(np.percentile(overlay, 50)), float(overlay.max()) or 1.0)
    outlines = {name: _numpy(mask) > 0 for name, mask in (outlines or {}).items()}
    colours = dict(zip(outlines, OUTLINE_COLOURS))
    drawn = set()
    for axis, view in zip(axes, VIEWS):
        axis.imshow(upright_slice(image, view, point), cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        if overlay is not None:
            shown = np.ma.masked_less(upright_slice(overlay, view, point), overlay_range[0])
            mappable = axis.imshow(shown, cmap=cmap, vmin=overlay_range[0], vmax=overlay_range[1], alpha=0.6,
                                   interpolation="nearest")
        for name, mask in outlines.items():
            plane = upright_slice(mask, view, point)
            if plane.any():
                axis.contour(plane, levels=[0.5], colors=[colours[name]], linewidths=1.2)
                drawn.add(name)
        mark_orientation(axis, view)
        axis.set_title(view, color="white")
        axis.axis("off")
    if overlay is not None:
        bar = figure.colorbar(mappable, ax=axes, fraction=0.02, pad=0.01)
        bar.set_label(overlay_label, color="white")
        bar.ax.tick_params(colors="white")
    if outlines:
        labels = [f"outline: {name}" + ("" if name in drawn else " (not in these slices)") for name in outlines]
        figure.legend([Line2D([], [], color=colours[name]) for name in outlines], labels, loc="lower center",
                      ncol=len(outlines), frameon=False, labelcolor="white")
    if title:
        figure.suptitle(title, color="white")
    return figure


def save_figure(figure: plt.Figure, path: str | os.PathLike) -> None:
    """Write ``figure`` as PNG (atomically) and release it."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100, facecolor=figure.get_facecolor(), bbox_inches="tight")
    plt.close(figure)
