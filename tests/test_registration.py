"""Rigid registration: a synthetic head moved by a known rigid transform comes back to within
1 mm RMS displacement over the head; an unrelated image is flagged; the command writes the
registered scans, transforms, QC figures and a CSV, and preprocess chains it."""

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from brainkernels import cli
from brainkernels.data.registration import _array, register, to_sitk
from brainkernels.data.synth.ct import HeadFindings, render_ct
from brainkernels.data.synth.fields import lattice_noise
from brainkernels.data.synth.subject import draw_subject
from brainkernels.data.volume import Volume, load_nifti, save_nifti

SHAPE = 64  # 3.5 mm voxels over the 224 mm field of view


@pytest.fixture(scope="module")
def head():
    return render_ct(draw_subject(3), HeadFindings(), SHAPE).image


def moved(volume: Volume, degrees, millimetres) -> tuple[Volume, sitk.Euler3DTransform]:
    """``volume`` turned about its centre and shifted; returns it with the transform that maps a
    point of ``volume`` to the same anatomy in the moved copy (what registration must find)."""
    image = to_sitk(volume)
    truth = sitk.Euler3DTransform()
    truth.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(size - 1) / 2 for size in image.GetSize()]))
    truth.SetRotation(*np.radians(degrees))
    truth.SetTranslation(millimetres)
    array = _array(sitk.Resample(image, image, truth.GetInverse(), sitk.sitkLinear, float(volume.data.min())))
    return Volume(torch.from_numpy(np.ascontiguousarray(array))[None], volume.affine), truth


def rms_displacement_mm(found: sitk.Transform, truth: sitk.Transform, reference: Volume) -> float:
    image = to_sitk(reference)
    head_voxels = np.argwhere(reference.data[0].numpy() > -500)
    points = [image.TransformIndexToPhysicalPoint([int(i) for i in index]) for index in head_voxels[::5]]
    errors = [np.subtract(found.TransformPoint(point), truth.TransformPoint(point)) for point in points]
    return float(np.sqrt(np.mean(np.sum(np.square(errors), axis=1))))


@pytest.mark.parametrize(("degrees", "millimetres"), [
    ((15, 0, 0), (0, 20, 0)),
    ((-6, 9, 10), (12, -11, 12)),
])  # fmt: skip
def test_a_moved_head_comes_back_within_a_millimetre(head, degrees, millimetres):
    target, truth = moved(head, degrees, millimetres)
    before = rms_displacement_mm(sitk.Euler3DTransform(), truth, head)
    result = register(target, head)
    assert before > 15
    assert rms_displacement_mm(result.transform, truth, head) < 1.0
    assert not result.failed
    assert result.volume.shape == head.shape and np.array_equal(result.volume.affine, head.affine)


def test_an_unrelated_image_is_flagged(head):
    grid = np.stack(np.meshgrid(*[np.arange(SHAPE) * 3.5] * 3, indexing="ij"), axis=-1).astype(np.float32)
    noise = Volume(torch.from_numpy(500 * lattice_noise(5, 20.0, grid))[None], head.affine)
    result = register(noise, head)
    assert result.failed and result.similarity < 1.05


def test_a_sheared_affine_is_refused(head):
    sheared = Volume(head.data, head.affine @ np.array([[1, 0, 0.3, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    with pytest.raises(ValueError, match="sheared"):
        register(sheared, head)


def test_the_command_writes_scans_transforms_figures_and_flags_failures(head, tmp_path, capsys):
    target, truth = moved(head, (10, -5, 0), (5, 10, -8))
    save_nifti(head, tmp_path / "in" / "reference.nii.gz", dtype=np.int16)
    save_nifti(target, tmp_path / "in" / "moved.nii.gz")
    save_nifti(Volume(torch.full_like(head.data, -1000.0).index_fill_(3, torch.tensor([30]), 500.0), head.affine),
               tmp_path / "in" / "unrelated.nii.gz")
    status = cli.main(["register", "--in", str(tmp_path / "in"),
                       "--reference", str(tmp_path / "in" / "reference.nii.gz"),
                       "--out", str(tmp_path / "out"), "--workers", "1", "--quiet"])
    assert status == 1
    assert "unrelated.nii.gz: failed: similarity" in capsys.readouterr().err
    table = pd.read_csv(tmp_path / "out" / "registration.csv").set_index("scan")
    assert table["status"].to_dict() == {"moved.nii.gz": "registered", "reference.nii.gz": "registered",
                                         "unrelated.nii.gz": "failed"}
    assert sorted(path.name for path in (tmp_path / "out").glob("*.nii.gz")) == ["moved.nii.gz", "reference.nii.gz"]
    found = sitk.ReadTransform(str(tmp_path / "out" / "transforms" / "moved.tfm"))
    assert rms_displacement_mm(found, truth, head) < 1.0
    assert all((tmp_path / "out" / "qc" / f"{name}.png").stat().st_size > 10_000
               for name in ("moved", "reference", "unrelated"))
    registered = load_nifti(tmp_path / "out" / "moved.nii.gz")
    np.testing.assert_allclose(registered.affine, head.affine, atol=1e-5)


def test_preprocess_registers_before_resampling(head, tmp_path):
    target, _ = moved(head, (0, 0, 12), (0, -15, 0))
    save_nifti(head, tmp_path / "reference.nii.gz", dtype=np.int16)
    save_nifti(target, tmp_path / "in" / "moved.nii.gz")
    common = ["preprocess", "--pipeline", "ct", "--in", str(tmp_path / "in"), "--spacing", "3.5", "--shape", str(SHAPE),
              "--quiet"]
    assert cli.main([*common, "--out", str(tmp_path / "registered"),
                     "--register-to", str(tmp_path / "reference.nii.gz")]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "plain")]) == 0
    save_nifti(head, tmp_path / "reference_in" / "reference.nii.gz", dtype=np.int16)
    assert cli.main([*common[:4], str(tmp_path / "reference_in"), *common[5:],
                     "--out", str(tmp_path / "expected")]) == 0
    expected = load_nifti(tmp_path / "expected" / "reference.nii.gz").data
    registered = load_nifti(tmp_path / "registered" / "moved.nii.gz").data
    plain = load_nifti(tmp_path / "plain" / "moved.nii.gz").data
    assert (registered - expected).abs().mean() < 0.5 * (plain - expected).abs().mean()


def test_bad_invocations_are_one_line_errors(head, tmp_path, capsys):
    save_nifti(head, tmp_path / "in" / "scan.nii.gz", dtype=np.int16)
    common = ["register", "--in", str(tmp_path / "in"), "--out", str(tmp_path / "out")]
    assert cli.main([*common, "--reference", str(tmp_path / "missing.nii.gz")]) == 2
    assert capsys.readouterr().err == ("brainkernels register: error: "
                                       f"--reference {tmp_path / 'missing.nii.gz'}: no such file\n")
    assert cli.main([*common, "--reference", str(tmp_path / "in" / "scan.nii.gz"), "--workers", "0"]) == 2
    assert "--workers must be at least 1; got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
