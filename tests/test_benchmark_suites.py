"""The benchmark suites still run (each benchmark once, without timing)."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_benchmark_suites_run(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(BENCHMARKS), "-q", "-p", "no:cacheprovider", "--benchmark-disable"],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
