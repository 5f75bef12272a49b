"""Synthetic cohorts: time to write a 20-subject cohort of each kind on a 96^3 grid, from a process
that has already loaded the template (the one-off cost of loading and resampling it is measured
apart and recorded in ``extra_info``).

Goal: well under a minute per cohort on two CPU cores. Run:

    pytest benchmarks/test_synth.py -q
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from brainkernels.data.synth import template_anatomy, write_cohort
from brainkernels.data.synth.grid import ADULT_FOV_MM
from brainkernels.data.synth.placement import placement_anatomy

SUBJECTS = 20
SHAPE = 96


@pytest.fixture(scope="module")
def template_setup_s() -> float:
    """Seconds to load the MNI152 template and resample it to the grids the cohorts use."""
    start = time.perf_counter()
    template_anatomy(SHAPE, ADULT_FOV_MM)
    placement_anatomy()
    return time.perf_counter() - start


@pytest.mark.parametrize("kind", ["cq500", "brats", "dhcp"])
def test_write_cohort(benchmark, tmp_path, template_setup_s, kind):
    benchmark.group = "synthetic cohort, 20 subjects at 96^3"
    benchmark.extra_info.update(
        kind=kind, subjects=SUBJECTS, shape=SHAPE, template_setup_s=round(template_setup_s, 2),
        cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
    )  # fmt: skip
    cohort = benchmark.pedantic(
        write_cohort, args=(kind, tmp_path / kind), kwargs={"subjects": SUBJECTS, "shape": SHAPE, "seed": 0},
        rounds=1, iterations=1,
    )  # fmt: skip
    assert cohort.is_file()
