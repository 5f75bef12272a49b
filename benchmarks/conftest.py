"""Shared pieces of the benchmark suites: size scale, device, and a side-by-side summary.

Every benchmark records its peak bytes in ``extra_info``; at the end of the run each group's
implementations are printed beside the group's baseline with time and memory ratios, and
written as JSON when ``--bench-report PATH`` is given. Memory is printed in binary units (GiB,
as allocators count) with decimal GB (the unit of the README's memory table and the demo report)
beside it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.ndimage
import torch

from brainkernels.data.volume import Volume, save_nifti
from brainkernels.memory import format_bytes, measure_peak

_results: dict[str, dict[str, dict]] = defaultdict(dict)


def pytest_addoption(parser):
    group = parser.getgroup("brainkernels benchmarks")
    group.addoption("--bench-scale", choices=("small", "full"), default="small",
                    help="small: minutes on a 2-core CPU (default); full: the sizes the issues name, for a GPU")
    group.addoption("--bench-device", default="cpu", help="device to benchmark on (cpu, cuda)")
    group.addoption("--bench-report", default=None, help="write the side-by-side summary as JSON here")


@pytest.fixture(scope="session")
def scale(request) -> str:
    return request.config.getoption("--bench-scale")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    device = torch.device(request.config.getoption("--bench-device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda but no CUDA device is available")
    return device


def _smooth_head(shape, seed: int, inside: float, spread: float, outside: float) -> np.ndarray:
    """An ellipsoid 'head' of smoothly varying intensity on a constant background."""
    rng = np.random.default_rng(seed)
    axes = np.ogrid[tuple(slice(-1, 1, complex(0, n)) for n in shape)]
    inner = sum(axis**2 for axis in axes) < 0.7
    texture = scipy.ndimage.zoom(rng.standard_normal((8, 8, 8)), [n / 8 for n in shape], order=1)
    return np.where(inner, inside + spread * texture, outside).astype(np.float32)


def _save(path, data: np.ndarray, spacing: float = 1.0, dtype=np.int16) -> None:
    save_nifti(Volume(torch.from_numpy(data)[None], np.diag([spacing] * 3 + [1.0])), path, dtype=dtype)


@pytest.fixture(scope="session")
def volumes():
    """Synthetic volumes of any size (the synthetic cohorts are cubes): ``volumes.head(shape, seed,
    inside, spread, outside)`` makes one, ``volumes.save(path, data, spacing, dtype)`` writes it."""
    return SimpleNamespace(head=_smooth_head, save=_save)


def _synchronized(fn, device: torch.device):
    if device.type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


@pytest.fixture
def compare(benchmark, device):
    """``compare(group, name, fn, baseline=False, **info)``: time ``fn`` and measure its peak bytes."""

    def run(group: str, name: str, fn, baseline: bool = False, extrapolate: float = 1.0, measure_memory: bool = True,
            rounds: int = 5, **info):
        """``extrapolate``: the timed call does 1/extrapolate of the group's work (a baseline too
        slow to run whole); its time is scaled up in the summary and said so. ``measure_memory=False``
        for code the CPU storage tracker cannot run under (torch.compile): time only. ``rounds``:
        fewer for calls of a minute."""
        peak = measure_peak(fn, device=device) if measure_memory else None
        benchmark.group = group
        if extrapolate != 1:  # pytest-benchmark's table shows the time of the part that ran
            benchmark.name += f" [timed {1 / extrapolate:.3g} of the work; summary scales x{extrapolate:g}]"
        benchmark.extra_info.update(
            implementation=name, peak_bytes=peak and peak.peak_bytes, memory_method=peak and peak.method,
            device=str(device),
            device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            torch=torch.__version__, **info,
        )
        benchmark.pedantic(_synchronized(fn, device), rounds=rounds, warmup_rounds=1, iterations=1)
        if benchmark.stats is not None:
            _results[group][name] = {"median_s": benchmark.stats.stats.median * extrapolate,
                                     "peak_bytes": peak and peak.peak_bytes, "baseline": baseline,
                                     "extrapolated_from_fraction": 1 / extrapolate, **info}

    return run


def _significant(value: float) -> str:
    """Three significant digits, never rounded to zero and never in exponent notation."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def speed_wording(speedup: float) -> str:
    """``speedup``: the baseline's time over ours."""
    return f"{_significant(speedup)}x faster" if speedup >= 1 else f"{_significant(1 / speedup)}x slower"


def memory_wording(ratio: float) -> str:
    """``ratio``: our peak bytes over the baseline's."""
    if ratio == 0:
        return "no peak memory measured"
    return f"{_significant(1 / ratio)}x less peak memory" if ratio <= 1 else f"{_significant(ratio)}x more peak memory"


def bytes_wording(count: int) -> str:
    return f"{format_bytes(count)} ({_significant(count / 1e9)} GB)"


def pytest_terminal_summary(terminalreporter, config):
    if not _results:
        return
    terminalreporter.section("brainkernels: ours beside the baselines (same run)")
    terminalreporter.write_line("memory: GiB = 2^30 bytes, GB = 10^9 bytes (the README's and the demo report's unit)")
    report = {}
    for group, entries in _results.items():
        baselines = [entry for entry in entries.values() if entry["baseline"]]
        reference = min(baselines, key=lambda entry: entry["median_s"]) if baselines else None
        terminalreporter.write_line(group)
        rows = report[group] = {}
        for name, entry in sorted(entries.items(), key=lambda item: item[1]["median_s"]):
            row = rows[name] = dict(entry)
            peak = "n/a" if entry["peak_bytes"] is None else bytes_wording(entry["peak_bytes"])
            text = f"  {name:<28} {entry['median_s'] * 1e3:10.2f} ms  peak {peak:>20}"
            if entry["extrapolated_from_fraction"] != 1:
                text += f" (time extrapolated from {entry['extrapolated_from_fraction']:.3g} of the work)"
            for key, value in entry.items():
                if key.endswith("_bytes") and key != "peak_bytes":
                    text += f"  {key} {bytes_wording(value)}"
            if reference is not None and not entry["baseline"]:
                row["speedup_vs_best_baseline"] = reference["median_s"] / entry["median_s"]
                text += f"  {speed_wording(row['speedup_vs_best_baseline'])} than the best baseline"
                if entry["peak_bytes"] is not None and reference["peak_bytes"] is not None:
                    row["peak_ratio_vs_best_baseline"] = entry["peak_bytes"] / max(reference["peak_bytes"], 1)
                    text += f", {memory_wording(row['peak_ratio_vs_best_baseline'])}"
            terminalreporter.write_line(text)
    path = config.getoption("--bench-report")
    if path:
        Path(path).write_text(json.dumps(report, indent=2))
        terminalreporter.write_line(f"summary written to {Path(path).resolve()} (JSON)")
