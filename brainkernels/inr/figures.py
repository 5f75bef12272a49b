"""INR figures: age sequences as a montage, and predicted against true head circumference."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
from torch import Tensor

from brainkernels.data.orientation import mark_orientation, upright, upright_slice
from brainkernels.figures import plt, save_figure


def sequence_figure(images: Sequence[Tensor], ages_weeks: Sequence[float], title: str = "") -> plt.Figure:
    """One column per age: the axial slice through the centre and, for volumes, the sagittal one
    (the sagittal view shows the head growing from front to back and top to bottom); neurological
    convention, with the edges lettered and the intensity's colour bar."""
    volumes = [image.detach().float().cpu().numpy() for image in images]
    views = ["axial", "sagittal"] if volumes[0].ndim == 3 else ["axial"]
    figure, axes = plt.subplots(len(views), len(volumes), figsize=(2.2 * len(volumes) + 0.8, 2.4 * len(views)),
                                facecolor="black", squeeze=False)
    for column, (volume, age) in enumerate(zip(volumes, ages_weeks)):
        for row, view in enumerate(views):
            plane = upright(volume) if volume.ndim == 2 else upright_slice(volume, view, np.array(volume.shape) // 2)
            shown = axes[row, column].imshow(plane, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            mark_orientation(axes[row, column], view)
            axes[row, column].axis("off")
        axes[0, column].set_title(f"{age:g} weeks", color="white")
    bar = figure.colorbar(shown, ax=axes, fraction=0.02, pad=0.01)
    bar.set_label("T2 intensity (normalised)", color="white")
    bar.ax.tick_params(colors="white")
    if title:
        figure.suptitle(title, color="white", y=1.04)  # above the age titles
    return figure


def sequence_montage(images: Sequence[Tensor], ages_weeks: Sequence[float], path: str | os.PathLike,
                     title: str = "") -> None:
    """Write ``sequence_figure`` as PNG."""
    save_figure(sequence_figure(images, ages_weeks, title), path)


def head_circumference_plot(results: dict[str, Sequence[dict]], path: str | os.PathLike) -> None:
    """Per model (panel, titled with its name and number of babies), the true (circles) and
    predicted (crosses) head circumference of each test pair against the age predicted, with
    least-squares lines: a model that ignores the age input has a flat red line."""
    figure, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.6), sharey=True, squeeze=False)
    for axis, (name, rows) in zip(axes[0], results.items()):
        ages = np.array([row["age_out"] for row in rows])
        for key, style, label in (("hc_true_cm", "o", "truth"), ("hc_predicted_cm", "x", "prediction")):
            values = np.array([row[key] for row in rows])
            colour = "tab:blue" if key == "hc_true_cm" else "tab:red"
            axis.plot(ages, values, style, color=colour, label=label)
            if len(rows) > 1 and np.ptp(ages) > 0:
                slope, intercept = np.polyfit(ages, values, 1)
                span = np.array([ages.min(), ages.max()])
                axis.plot(span, slope * span + intercept, color=colour, linewidth=1,
                          label=f"slope {slope:.2f} cm/week")
        axis.set_title(f"{name}: {len(rows)} held-out {'baby' if len(rows) == 1 else 'babies'}")
        axis.set_xlabel("postmenstrual age (weeks)")
        axis.legend(fontsize=7)
    axes[0, 0].set_ylabel("head circumference (cm)")
    figure.tight_layout()
    save_figure(figure, path)


def growth_plot(ages: Sequence[float], atlases: dict[str, Sequence[float]], cohort: Sequence[tuple[float, float]],
                path: str | os.PathLike, *, cohort_name: str, median_curve: Callable | None = None) -> None:
    """The head circumference of each average brain (``atlases``: name to one value per age, as
    lines) against the cohort's scans (``cohort``: (age, HC) points) and, when given, the median
    growth curve the cohort was drawn from."""
    figure, axis = plt.subplots(figsize=(6, 4.2))
    scan_ages, scan_hc = np.array(cohort).T
    axis.plot(scan_ages, scan_hc, "o", color="0.6", markersize=4, label=f"{cohort_name}: {len(cohort)} scans")
    if median_curve is not None:
        span = np.linspace(min(ages), max(ages), 100)
        axis.plot(span, median_curve(span), "--", color="black", linewidth=1, label="generator's median curve")
    for (name, values), colour in zip(atlases.items(), ("tab:blue", "tab:red")):
        axis.plot(ages, values, "-x", color=colour, label=f"{name} latent")
    axis.set_xlabel("postmenstrual age (weeks)")
    axis.set_ylabel("head circumference (cm)")
    axis.set_title("average brains' head circumference against the cohort's growth", fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
