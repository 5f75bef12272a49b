"""Slice figures a radiologist can read: lettered edges that match where the anatomy lands,
slices through the head (the truth when known, never a stray voxel or the air), outlines of the
truth, colour bars; metrics that cannot be computed print their reason, never "nan"."""

from __future__ import annotations

import csv
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import brainkernels
from brainkernels.atomic import write_csv
from brainkernels.data.orientation import EDGE_LETTERS, VIEWS, upright_slice
from brainkernels.figures import figure_point, orthogonal_slices
from brainkernels.inr.evaluate import summarise
from brainkernels.inr.figures import sequence_figure
from brainkernels.metrics.segmentation import hausdorff95
from brainkernels.metrics.undefined import Undefined

SHAPE = (24, 28, 20)


def _head() -> np.ndarray:
    """An ellipsoid head in the middle of the volume, air around it."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"), axis=-1)
    return (((grid - (np.array(SHAPE) - 1) / 2) / (np.array(SHAPE) * 0.35)) ** 2).sum(-1) <= 1


def _texts(axis) -> set[str]:
    return {text.get_text() for text in axis.texts}


@pytest.mark.parametrize("view", VIEWS)
def test_edge_letters_name_the_side_the_anatomy_lands_on(view):
    # A bright voxel on the subject's right (high D), anterior (high H) and superior (high W) side.
    volume = np.zeros(SHAPE)
    point = (SHAPE[0] - 3, SHAPE[1] - 3, SHAPE[2] - 3)
    volume[point] = 1
    row, column = np.argwhere(upright_slice(volume, view, point))[0]
    plane = upright_slice(volume, view, point)
    left, right, top, bottom = EDGE_LETTERS[view]
    horizontal = right if column >= plane.shape[1] / 2 else left
    vertical = top if row < plane.shape[0] / 2 else bottom
    assert horizontal == {"axial": "R", "coronal": "R", "sagittal": "A"}[view]
    assert vertical == {"axial": "A", "coronal": "S", "sagittal": "S"}[view]


def test_slices_carry_their_edge_letters_colour_bar_and_outlines():
    head = _head()
    truth = np.zeros(SHAPE, bool)
    truth[10:14, 12:16, 8:12] = True
    figure = orthogonal_slices(head.astype(float), point=figure_point(head, truth=truth), overlay=head * 1.0,
                               outlines={"true finding": truth}, overlay_label="score")
    slices = [axis for axis in figure.axes if axis.get_title() in VIEWS]
    assert [axis.get_title() for axis in slices] == list(VIEWS)
    for axis in slices:
        assert set(EDGE_LETTERS[axis.get_title()]) <= _texts(axis)
        assert axis.collections, f"{axis.get_title()}: the truth's outline is not drawn"
    assert len(figure.axes) == 4  # the three slices and the colour bar
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["outline: true finding"]
    plt.close(figure)
    figure = orthogonal_slices(head * 1.0, point=figure_point(head), outlines={"segmentation": np.zeros(SHAPE)})
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["outline: segmentation "
                                                                           "(not in these slices)"]
    plt.close(figure)


def test_slices_cut_through_the_truth_when_it_is_known():
    head, truth = _head(), np.zeros(SHAPE, bool)
    truth[5:8, 10:13, 8:11] = True
    score = np.zeros(SHAPE)
    score[SHAPE[0] // 2, SHAPE[1] // 2, SHAPE[2] // 2] = 10  # the map's maximum lies elsewhere
    assert truth[figure_point(head, truth=truth, score=score)]


def test_slices_never_cut_through_the_air_or_a_stray_voxel():
    head = _head()
    score = np.random.default_rng(0).random(SHAPE) * 0.1
    score[0, 0, 0] = 100  # the maximum of the whole map, in the air
    edge = tuple(np.argwhere(head)[0])
    score[edge] = 50  # one stray voxel at the edge of the head
    score[6:11, 12:17, 8:13] = 5  # a region of high error inside the head
    point = figure_point(head, score=score)
    assert head[point] and 6 <= point[0] < 11 and 12 <= point[1] < 17 and 8 <= point[2] < 13
    assert head[figure_point(head)]  # neither truth nor score: inside the head too
    with pytest.raises(ValueError, match="head mask is empty"):
        figure_point(np.zeros(SHAPE, bool))


@pytest.mark.parametrize("shape", [(16, 16), (16, 16, 12)])
def test_inr_sequences_have_edge_letters_and_a_colour_bar(shape):
    figure = sequence_figure([torch.rand(shape) for _ in range(3)], [30.0, 35.0, 40.0])
    slices = [axis for axis in figure.axes if axis.images and axis.get_label() != "<colorbar>"]
    assert len(slices) == 3 * (len(shape) - 1)
    for axis in slices:
        assert {"L", "R"} <= _texts(axis) or {"P", "A", "S", "I"} <= _texts(axis)
    assert any(axis.get_label() == "<colorbar>" for axis in figure.axes)
    plt.close(figure)


def test_an_undefined_metric_prints_its_reason(tmp_path):
    value = Undefined("needs ≥ 3 held-out babies")
    assert np.isnan(value) and np.isnan(value + 1)
    assert f"{value:.2f}" == str(value) == "needs ≥ 3 held-out babies"
    assert f"{value:>30.4f}" == f"{'needs ≥ 3 held-out babies':>30}"
    assert pickle.loads(pickle.dumps(value)).reason == value.reason  # results travel between ranks
    write_csv(tmp_path / "table.csv", [{"r": value, "sigma": 0.5}])
    assert list(csv.reader((tmp_path / "table.csv").open())) == [["r", "sigma"], ["needs ≥ 3 held-out babies", "0.5"]]


def test_metrics_that_cannot_be_computed_say_why():
    rows = [dict(psnr=1.0, ssim=0.5, mae=0.1, hc_true_cm=30.0 + i, hc_predicted_cm=31.0 + i) for i in range(3)]
    assert f"{summarise(rows[:2])['hc_r']:.2f}" == "needs ≥ 3 held-out babies"
    assert f"{summarise(rows[:1])['hc_sigma_cm']:.2f}" == "needs ≥ 2 held-out babies"
    empty, full = np.zeros((4, 4, 4), bool), np.ones((4, 4, 4), bool)
    assert str(hausdorff95(empty, full)) == "one mask is empty"


def test_figures_select_the_agg_backend_even_when_the_environment_names_another():
    code = "import matplotlib, brainkernels.figures; print(matplotlib.get_backend())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "MPLBACKEND": "pdf"})
    assert result.stdout.strip().lower() == "agg"


def test_only_brainkernels_figures_imports_pyplot_or_selects_a_backend():
    package = Path(brainkernels.__file__).parent
    offenders = [str(path.relative_to(package)) for path in sorted(package.rglob("*.py"))
                 if path.name != "figures.py" or path.parent != package
                 if re.search(r"^\s*(import matplotlib\.pyplot|from matplotlib import pyplot|matplotlib\.use\()",
                              path.read_text(), re.MULTILINE)]
    assert offenders == [], "import pyplot as `from brainkernels.figures import plt`"
