"""The real-data path of README's "Real data" section, end to end on CQ500-like DICOM studies made
from a small synthetic cohort: import-dicom -> register -> preprocess -> ppr train -> ppr detect."""

import shutil

import nibabel as nib
import numpy as np
import pandas as pd

from brainkernels import cli
from brainkernels.data.synth.cohort import write_cohort
from brainkernels.data.synth.dicom import write_ct_study
from brainkernels.data.volume import load_nifti

SHAPE = 32


def test_dicom_studies_to_anomaly_maps(tmp_path):
    synthetic = tmp_path / "synthetic"
    write_cohort("cq500", synthetic, subjects=6, shape=SHAPE, seed=2)
    names = sorted(path.name.removesuffix(".nii.gz") for path in (synthetic / "scans").iterdir())
    for name in names:
        write_ct_study(load_nifti(synthetic / "scans" / f"{name}.nii.gz"), tmp_path / "dicom" / name, patient_id=name)

    assert cli.main(["import-dicom", "--in", str(tmp_path / "dicom"), "--out", str(tmp_path / "nifti"), "--quiet"]) == 0
    selection = pd.read_csv(tmp_path / "nifti" / "selection.csv")
    assert set(selection.loc[selection["status"] == "chosen", "description"]) == {"CT PLAIN THIN"}
    reference = tmp_path / "nifti" / f"{names[0]}.nii.gz"
    assert cli.main(["register", "--in", str(tmp_path / "nifti"), "--reference", str(reference),
                     "--out", str(tmp_path / "registered"), "--workers", "2", "--quiet"]) == 0
    cohort = tmp_path / "cq500"
    assert cli.main(["preprocess", "--pipeline", "ct", "--in", str(tmp_path / "registered"),
                     "--out", str(cohort / "scans"), "--spacing", "7", "--shape", str(SHAPE), "--quiet"]) == 0
    shutil.copy(synthetic / "reads.csv", cohort / "reads.csv")

    run = tmp_path / "run"
    assert cli.main(["ppr", "train", "--data", str(cohort), "--out", str(run), "--network-size", "2", "--patch", "19",
                     "--steps", "3", "--patches-per-step", "16", "--device", "cpu", "--quiet"]) == 0
    assert cli.main(["ppr", "detect", "--model", str(run), "--input", str(cohort / "scans" / f"{names[1]}.nii.gz"),
                     "--out", str(tmp_path / "maps"), "--quiet"]) == 0
    anomaly = nib.load(tmp_path / "maps" / f"{names[1]}_anomaly.nii.gz")
    assert anomaly.shape == (SHAPE,) * 3 and np.isfinite(anomaly.get_fdata()).all()
    # Every scan ends on the reference's grid, and so does its anomaly map.
    np.testing.assert_allclose(anomaly.affine, load_nifti(cohort / "scans" / f"{names[0]}.nii.gz").affine, atol=1e-5)
