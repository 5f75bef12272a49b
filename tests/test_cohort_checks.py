"""A cohort that cannot train is refused before the run folder is claimed (nothing is written),
with the data folder and what is missing named; the INR's common grid is read from headers."""

import contextlib
import io
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainkernels.cli import main
from brainkernels.data.layouts.dhcp import read_dhcp
from brainkernels.data.synth.cohort import write_cohort
from brainkernels.data.volume import load_nifti, read_grid
from brainkernels.errors import BrainkernelsError
from brainkernels.inr.train import model_grid


def refused(*argv) -> str:
    """The one-line error of a command that must fail."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main([str(arg) for arg in argv]) == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err.getvalue(), err.getvalue()
    return lines[0]


def test_ppr_without_healthy_scans(tmp_path):
    write_cohort("cq500", tmp_path / "data", subjects=4, shape=16, seed=0)
    reads = pd.read_csv(tmp_path / "data" / "reads.csv")
    reads["R1:Fracture"] = reads["R2:Fracture"] = 1  # a majority reads a fracture in every scan
    reads.to_csv(tmp_path / "data" / "reads.csv", index=False)
    message = refused("ppr", "train", "--data", tmp_path / "data", "--out", tmp_path / "run", "--device", "cpu")
    assert f"{tmp_path / 'data'}: no healthy scans to train on" in message
    assert not (tmp_path / "run").exists()


def test_inr_with_one_subject_left_to_test(tmp_path):
    write_cohort("dhcp", tmp_path / "data", subjects=1, shape=16, seed=0, rescanned=1.0)
    message = refused("inr", "train", "--data", tmp_path / "data", "--out", tmp_path / "run", "--device", "cpu")
    assert f"{tmp_path / 'data'}: too few subjects: the only one, SYN001, is held out" in message
    assert not (tmp_path / "run").exists()


def test_patchddm_without_subjects(tmp_path):
    (tmp_path / "data").mkdir()
    message = refused("patchddm", "train", "--data", tmp_path / "data", "--out", tmp_path / "run", "--device", "cpu")
    assert f"{tmp_path / 'data'}: empty folder" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIL"])
def test_the_grid_from_a_header_is_the_grid_of_the_loaded_volume(tmp_path, orientation):
    data = np.random.default_rng(0).random((5, 6, 7), dtype=np.float32)
    axes = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    for column, (axis, sign) in enumerate(axes[letter] for letter in orientation):
        affine[axis, column] = sign * (column + 1.5)  # anisotropic voxels tell the axes apart
    affine[:3, 3] = (10, -20, 30)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "scan.nii.gz")
    shape, read_affine = read_grid(tmp_path / "scan.nii.gz")
    loaded = load_nifti(tmp_path / "scan.nii.gz")
    assert shape == loaded.shape
    np.testing.assert_allclose(read_affine, loaded.affine)


def test_the_inr_grid_check_reads_no_voxels(tmp_path, monkeypatch):
    write_cohort("dhcp", tmp_path / "data", subjects=3, shape=16, seed=0)
    scans = read_dhcp(tmp_path / "data")

    def no_voxels(*args, **kwargs):
        raise AssertionError("voxels read")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", no_voxels)
    grid = model_grid(scans, 3)
    assert grid.shape == (16, 16, 16)
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 12), np.float32), np.eye(4)), other)
    shutil.copy(other, scans[-1].t2w_path)
    with pytest.raises(BrainkernelsError, match=f"{scans[-1].t2w_path}: shape \\(16, 16, 12\\) differs"):
        model_grid(scans, 3)
