"""The benchmark summary says "slower" when ours is slower, never prints a ratio that rounds to
zero, gives memory in GiB and GB side by side, labels extrapolated times in pytest-benchmark's own
table and says where --bench-report wrote its file."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
_spec = importlib.util.spec_from_file_location("benchmarks_conftest", BENCHMARKS / "conftest.py")
summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summary)


@pytest.mark.parametrize(("speedup", "text"), [(102.4, "102x faster"), (1603.2, "1603x faster"), (1.19, "1.19x faster"),
                                               (0.84, "1.19x slower"), (0.23, "4.35x slower"),
                                               (0.0004, "2500x slower")])
def test_speed_says_slower_when_it_is(speedup, text):
    assert summary.speed_wording(speedup) == text


@pytest.mark.parametrize(("ratio", "text"), [(0.0042, "238x less peak memory"), (0.5, "2x less peak memory"),
                                             (1.0, "1x less peak memory"), (3.8, "3.8x more peak memory"),
                                             (0, "no peak memory measured")])
def test_memory_ratios_never_round_to_zero(ratio, text):
    assert summary.memory_wording(ratio) == text


def test_bytes_in_both_units():
    assert summary.bytes_wording(3 * 2**30) == "3.0 GiB (3.22 GB)"
    assert summary.bytes_wording(202 * 2**20) == "202.0 MiB (0.212 GB)"


SUITE = '''
import time

def test_fast(compare):
    compare("group", "ours", lambda: time.sleep(0.001))

def test_slow_sampled(compare):
    compare("group", "baseline", lambda: time.sleep(0.002), baseline=True, extrapolate=4)
'''


def test_a_run_labels_extrapolation_and_says_where_the_report_is(tmp_path):
    (tmp_path / "conftest.py").write_text((BENCHMARKS / "conftest.py").read_text())
    (tmp_path / "test_suite.py").write_text(SUITE)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--bench-report",
                             "bench.json", "test_suite.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "[timed 0.25 of the work; summary scales x4]" in result.stdout  # pytest-benchmark's table
    assert "(time extrapolated from 0.25 of the work)" in result.stdout
    assert re.search(r"ours .* \d+(\.\d+)?x faster than the best baseline", result.stdout)
    assert f"summary written to {tmp_path / 'bench.json'}" in result.stdout
    assert json.loads((tmp_path / "bench.json").read_text())["group"]["ours"]["speedup_vs_best_baseline"] > 1
