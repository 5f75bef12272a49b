"""The Triton kernels compile for the GPUs the package targets (Ampere, Hopper), on a machine with
no GPU: see compile_triton_for_gpu.py for why the interpreted tests cannot show it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from brainkernels import backends


@pytest.mark.skipif(not backends.triton_installed(), reason="triton is not installed")
@pytest.mark.parametrize("arch", [80, 90])
def test_triton_kernels_compile_for_the_gpu(arch, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a cached kernel would not be compiled again
    script = Path(__file__).with_name("compile_triton_for_gpu.py")
    result = subprocess.run([sys.executable, str(script), str(arch)], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    launches = re.search(rf"(\d+) launches compiled for sm_{arch}", result.stdout)
    assert launches and int(launches.group(1)) >= 50, result.stdout[-4000:]
