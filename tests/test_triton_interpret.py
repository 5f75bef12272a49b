"""The Triton backend on the CPU: the backend tests again, in a process with TRITON_INTERPRET=1
(it must be set before triton is imported, so it cannot be switched on inside this process)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from brainkernels import backends

BACKEND_TESTS = ["test_coordinate_mlp.py", "test_extract_patches3d.py", "test_group_norm_silu.py"]


@pytest.mark.skipif(not backends.triton_installed(), reason="triton is not installed")
@pytest.mark.skipif(backends.triton_interpreted(), reason="this process already interprets Triton")
@pytest.mark.parametrize("test_file", BACKEND_TESTS)
def test_triton_backend_under_interpreter(test_file, tmp_path):
    command = [sys.executable, "-m", "pytest", str(Path(__file__).with_name(test_file)), "-k", "triton", "-q",
               "-p", "no:cacheprovider"]
    # Run outside the source tree so the installed package (with its compiled module) is imported.
    result = subprocess.run(command, env={**os.environ, "TRITON_INTERPRET": "1"}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=1800)
    output = result.stdout[-8000:] + result.stderr[-4000:]
    assert result.returncode == 0, output
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 50, output
