"""Every script in python/examples runs at a tiny size and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "python" / "examples"
TINY = {
    "ppr_anomaly_detection.py": (["--subjects", "10", "--shape", "32", "--steps", "2", "--network-size", "1"],
                                 ["dense == patchwise: True", "AUROC, maximum error (paper)"]),
    "patchddm_segmentation.py": (["--subjects", "10", "--shape", "24", "--steps", "2", "--channels", "4"],
                                 ["_mask.nii.gz", "3 member(s): Dice"]),
    "inr_development.py": (["--subjects", "8", "--shape", "16", "--steps", "2", "--fit-steps", "2"],
                           ["sequence.png", "psnr"]),
    "drop_in_modules.py": (["--side", "16", "--memory-side", "32"],
                           ["U-Net outputs equal: True", "MLP outputs equal: True", "CoordinateMLP training step"]),
}


def test_every_example_is_tested():
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(TINY)


@pytest.mark.parametrize("script", sorted(TINY))
def test_example_runs(script, tmp_path):
    options, expected = TINY[script]
    out = [] if script == "drop_in_modules.py" else ["--out", str(tmp_path / "out")]
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *out, *options], capture_output=True,
                            text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for text in expected:
        assert text in result.stdout, result.stdout
