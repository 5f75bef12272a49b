"""Every method at the real data sets' sizes on the CPU: two training steps from the cache with
loader workers, then one inference, through the command line. Minutes each and several GiB, so
deselected by default (pyproject's addopts); run them by hand:

    pytest benchmarks/test_fullsize.py -m fullsize -s

The cohorts are synthetic cohorts in the real layouts whose images are replaced by volumes of the
real sizes (BraTS 240x240x155, four sequences and a label map; CT 256^3 in Hounsfield units, as
`preprocess --pipeline ct` resamples it; dHCP 217x290x290 T2 at 0.5 mm). ``-s`` prints the time
of each stage.
"""

import contextlib
import io
import time

import numpy as np
import pytest

from brainkernels.cli import main
from brainkernels.data.layouts.brats import read_brats
from brainkernels.data.layouts.cq500 import read_cq500
from brainkernels.data.layouts.dhcp import read_dhcp
from brainkernels.data.synth.cohort import write_cohort
from brainkernels.patchddm.train import split_subjects

pytestmark = pytest.mark.fullsize


def brainkernels(*argv) -> float:
    """Run a command in this process; its wall time in seconds."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        returncode = main([str(arg) for arg in argv])
    assert returncode == 0, out.getvalue()
    seconds = time.perf_counter() - started
    print(f"{' '.join(map(str, argv[:2]))}: {seconds:.1f} s")
    return seconds


def test_patchddm_on_brats_sized_subjects(tmp_path, volumes):
    shape = (240, 240, 155)
    write_cohort("brats", tmp_path / "brats", subjects=5, shape=16, seed=0)
    for index, subject in enumerate(read_brats(tmp_path / "brats")):
        for channel, path in enumerate(subject.modality_paths.values()):
            volumes.save(path, volumes.head(shape, 10 * index + channel, 600, 150, 0))
        seg = volumes.head(shape, 10 * index + 9, 0, 1, 0)
        volumes.save(subject.seg, np.select([seg > 1.0, seg > 0.5, seg > 0.2], [4, 2, 1], 0), dtype=np.uint8)
    run = tmp_path / "run"
    brainkernels("patchddm", "train", "--data", tmp_path / "brats", "--out", run, "--patch", "128", "--channels", "4",
                 "--channel-mult", "1,2,2,2", "--steps", "2", "--checkpoint-every", "2", "--workers", "2",
                 "--device", "cpu", "--quiet")
    training = split_subjects(read_brats(tmp_path / "brats"), 0)[0]
    assert len(list((run / "cache").iterdir())) == len(training)  # prepared once each
    subject = read_brats(tmp_path / "brats")[0]
    brainkernels("patchddm", "segment", "--model", run, "--input", subject.t1.parent, "--out", tmp_path / "masks",
                 "--steps", "2", "--ensemble", "1", "--device", "cpu", "--quiet")
    assert list((tmp_path / "masks").glob("*.nii.gz"))


def test_ppr_on_256_cubed_ct(tmp_path, volumes):
    write_cohort("cq500", tmp_path / "cq500", subjects=5, shape=16, seed=0)
    scans = read_cq500(tmp_path / "cq500").scans
    for index, scan in enumerate(scans):
        volumes.save(scan.path, volumes.head((256,) * 3, index, 40, 15, -1000))
    run = tmp_path / "run"
    brainkernels("ppr", "train", "--data", tmp_path / "cq500", "--out", run, "--network-size", "1", "--steps", "2",
                 "--checkpoint-every", "2", "--workers", "2", "--device", "cpu", "--quiet")
    assert list((run / "cache").iterdir())
    brainkernels("ppr", "detect", "--model", run, "--input", scans[0].path, "--out", tmp_path / "maps",
                 "--device", "cpu", "--quiet")
    assert list((tmp_path / "maps").glob("*_anomaly.nii.gz"))


def test_inr_on_dhcp_sized_scans(tmp_path, volumes):
    shape = (217, 290, 290)
    write_cohort("dhcp", tmp_path / "dhcp", subjects=4, shape=16, seed=0, rescanned=0.5)
    scans = read_dhcp(tmp_path / "dhcp")
    for index, scan in enumerate(scans):
        volumes.save(scan.t2w_path, volumes.head(shape, index, 400, 100, 20), spacing=0.5)  # brain masks unused
    run = tmp_path / "run"
    brainkernels("inr", "train", "--data", tmp_path / "dhcp", "--out", run, "--pixel-ratio", "0.01", "--width", "16",
                 "--depth", "3", "--latent-size", "8", "--batch-size", "2", "--steps", "2", "--checkpoint-every", "2",
                 "--workers", "2", "--device", "cpu", "--quiet")
    brainkernels("inr", "predict", "--model", run, "--input", scans[0].t2w_path, "--age-in", scans[0].age_weeks,
                 "--age-out", "40", "--out", tmp_path / "predicted.nii.gz", "--fit-steps", "2", "--fit-voxels",
                 "10000", "--device", "cpu", "--quiet")
    assert (tmp_path / "predicted.nii.gz").is_file()
