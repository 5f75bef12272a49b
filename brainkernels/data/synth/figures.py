"""Slice montages of synthetic scans, to see what the generator makes: a head CT with each kind
of finding, a BraTS-style subject with its labels, and one neonate at three ages.

Slices are axial, coronal and sagittal through the finding's centre (the brain's centre for the
neonate), drawn in neurological convention (the subject's right on the right of each panel)
with R/L, A/P and S/I at the edges.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from brainkernels.atomic import atomic_path
from brainkernels.data.orientation import VIEWS, mark_orientation
from brainkernels.data.synth.ct import FRACTURE_KINDS, HeadFindings, draw_fracture, draw_haemorrhage, render_ct
from brainkernels.data.synth.grid import ADULT_FOV_MM
from brainkernels.data.synth.mr import MODALITIES, SEG_LABELS, draw_tumour, render_brats
from brainkernels.data.synth.neonatal import render_neonate
from brainkernels.data.synth.subject import draw_subject

FIGURE_NAMES = ("ct_findings.png", "brats_subject.png", "neonate_development.png")
NEONATAL_FIGURE_AGES = (28.0, 34.0, 40.0)
_BRAIN_WINDOW = (0.0, 80.0)  # Hounsfield units: level 40, width 80
_BONE_WINDOW = (-500.0, 2000.0)
_LABEL_COLOURS = {SEG_LABELS["necrosis"]: "red", SEG_LABELS["oedema"]: "limegreen", SEG_LABELS["enhancing"]: "gold"}


def write_figures(out: str | os.PathLike, *, shape: int = 96, seed: int = 0) -> list[Path]:
    """Write the three montages (``FIGURE_NAMES``) as PNG files into the folder ``out``.

    Figures are drawn without pyplot (matplotlib's Agg renderer writes the PNG), so the caller's
    matplotlib backend and open figures are left alone."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    return [
        _save(_ct_figure(rng, shape), out / FIGURE_NAMES[0]),
        _save(_brats_figure(rng, shape), out / FIGURE_NAMES[1]),
        _save(_neonate_figure(rng, shape), out / FIGURE_NAMES[2]),
    ]


def _ct_figure(rng: np.random.Generator, shape: int) -> Figure:
    cases = {
        "intraparenchymal haemorrhage (left)": HeadFindings((draw_haemorrhage(rng, "left", "intraparenchymal"),)),
        "subdural haemorrhage (right)": HeadFindings((draw_haemorrhage(rng, "right", "subdural"),)),
        **{f"{kind} calvarial fracture": HeadFindings(fracture=draw_fracture(rng, "left", kind))
           for kind in FRACTURE_KINDS},
    }
    figure = Figure(figsize=(10, 3.5 * len(cases)), facecolor="black")
    axes = figure.subplots(len(cases), 3)
    for row, (title, findings) in enumerate(cases.items()):
        scan = render_ct(draw_subject(int(rng.integers(2**31))), findings, shape)
        image, mask = scan.image.data[0].numpy(), scan.mask.data[0].numpy()
        window = _BRAIN_WINDOW if findings.haemorrhages else _BONE_WINDOW
        # A fracture line is a millimetre or two: show the 100 mm around it.
        half = None if findings.haemorrhages else round(50 / (ADULT_FOV_MM / shape))
        for column, view in enumerate(VIEWS):
            axis = axes[row, column]
            _panel(axis, _slice(image, mask > 0, view, half), window, f"{title}, {view}" if column == 0 else view,
                   view)
            axis.contour(_slice(mask, mask > 0, view, half).T, levels=[0.5], colors="red", linewidths=0.6)
    return figure


def _brats_figure(rng: np.random.Generator, shape: int) -> Figure:
    scan = render_brats(draw_subject(int(rng.integers(2**31))), draw_tumour(rng), shape)
    seg = scan.seg.data[0].numpy()
    figure = Figure(figsize=(14, 8.5), facecolor="black")
    axes = figure.subplots(3, len(MODALITIES) + 1)
    for row, view in enumerate(VIEWS):
        for column, modality in enumerate(MODALITIES):
            image = scan.images[modality].data[0].numpy()
            window = (0.0, float(np.percentile(image[image > 0], 99.5)))
            _panel(axes[row, column], _slice(image, seg > 0, view), window, f"{modality}, {view}", view)
        t1ce = scan.images["t1ce"].data[0].numpy()
        window = (0.0, float(np.percentile(t1ce[t1ce > 0], 99.5)))
        _panel(axes[row, -1], _slice(t1ce, seg > 0, view), window, f"labels on t1ce, {view}", view)
        labels = _slice(seg, seg > 0, view).T
        overlay = np.zeros((*labels.shape, 4))
        for label, colour in _LABEL_COLOURS.items():
            overlay[labels == label] = to_rgba(colour, alpha=0.6)
        axes[row, -1].imshow(overlay, origin="lower", interpolation="nearest")
    return figure


def _neonate_figure(rng: np.random.Generator, shape: int) -> Figure:
    subject = draw_subject(int(rng.integers(2**31)))
    figure = Figure(figsize=(9, 9), facecolor="black")
    axes = figure.subplots(3, len(NEONATAL_FIGURE_AGES))
    for column, age in enumerate(NEONATAL_FIGURE_AGES):
        scan = render_neonate(subject, age, shape)
        image, brain = scan.t2.data[0].numpy(), scan.brain_mask.data[0].numpy() > 0
        for row, view in enumerate(VIEWS):
            _panel(axes[row, column], _slice(image, brain, view), (0.0, 1100.0), f"{age:g} weeks, {view}", view)
    return figure


def _slice(volume: np.ndarray, region: np.ndarray, view: str, half: int | None = None) -> np.ndarray:
    """The ``view`` slice of ``volume`` through the centre of ``region`` (the volume's centre if
    the region is empty), as (horizontal, vertical) axes; with ``half``, only the ``half`` voxels
    to each side of that centre."""
    centre = np.round(np.argwhere(region).mean(axis=0)).astype(int) if region.any() else np.array(volume.shape) // 2
    near = [slice(None) if half is None else slice(max(c - half, 0), c + half + 1) for c in centre]
    if view == "axial":
        return volume[near[0], near[1], centre[2]]
    if view == "coronal":
        return volume[near[0], centre[1], near[2]]
    return volume[centre[0], near[1], near[2]]


def _panel(axis, section: np.ndarray, window: tuple[float, float], title: str, view: str) -> None:
    axis.imshow(section.T, origin="lower", cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
    axis.set_title(title, color="white", fontsize=8)
    axis.set_axis_off()
    mark_orientation(axis, view)


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100, facecolor=figure.get_facecolor())
    return path
