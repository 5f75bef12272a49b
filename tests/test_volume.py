"""NIfTI volumes: loading (RAS reorientation, channels), saving with the input's geometry, atomicity,
and the errors that name the file."""

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch

from brainkernels.data import volume as volume_module
from brainkernels.data.volume import Volume, load_nifti, save_nifti, stack_modalities

LPS = np.array([[-2.0, 0, 0, 30], [0, -1.0, 0, 40], [0, 0, 3.0, -5], [0, 0, 0, 1]])
IDENTITY = np.eye(4)


def write(path, array, affine=IDENTITY):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine), path)
    return path


def world_value(volume: Volume, point_mm: np.ndarray) -> float:
    index = np.linalg.solve(volume.affine, np.append(point_mm, 1))[:3]
    return float(volume.data[(0, *np.round(index).astype(int))])


def test_round_trip_keeps_data_and_affine_exactly(tmp_path):
    data = np.random.default_rng(0).normal(size=(5, 6, 7))
    first = load_nifti(write(tmp_path / "a.nii.gz", data, np.diag([1.5, 1.0, 2.0, 1.0])))
    second = load_nifti(save_nifti(first, tmp_path / "b.nii.gz"))
    assert torch.equal(first.data, second.data)
    np.testing.assert_array_equal(first.affine, second.affine)
    assert second.spacing == (1.5, 1.0, 2.0) and second.shape == (5, 6, 7) and second.channels == 1


def test_non_ras_input_comes_out_ras_with_the_same_world_positions(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    original = nib.Nifti1Image(data, LPS)
    volume = load_nifti(write(tmp_path / "lps.nii", data, LPS))
    assert nib.aff2axcodes(volume.affine) == ("R", "A", "S")
    for index in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        point = original.affine @ np.append(index, 1)
        assert world_value(volume, point[:3]) == data[index]
    # saved with the RAS geometry, it still overlays the original in world space
    saved = nib.load(save_nifti(volume, tmp_path / "out.nii.gz"))
    np.testing.assert_allclose(saved.affine, volume.affine, atol=1e-6)


def test_four_dimensional_images_become_channels(tmp_path):
    data = np.random.default_rng(1).normal(size=(3, 4, 5, 2))
    volume = load_nifti(write(tmp_path / "c.nii.gz", data))
    assert volume.data.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(volume.data[1].numpy(), data[..., 1], rtol=1e-6)
    again = load_nifti(save_nifti(volume, tmp_path / "d.nii.gz"))
    assert torch.equal(again.data, volume.data)


@pytest.mark.parametrize(
    "name,make,message",
    [
        ("missing.nii.gz", None, "no such file"),
        ("notes.txt", lambda p: p.write_text("hello"), "not a NIfTI file"),
        ("fake.nii.gz", lambda p: p.write_bytes(gzip.compress(b"not a nifti header at all")), "not a readable NIfTI"),
        ("flat.nii.gz", lambda p: write(p, np.zeros((4, 5))), "expected a 3D or 4D image; got 2 dimensions"),
        ("five.nii.gz", lambda p: write(p, np.zeros((2, 2, 2, 2, 2))), "expected a 3D or 4D image; got 5"),
        ("nan.nii.gz", lambda p: write(p, np.full((2, 2, 2), np.nan)), "8 NaN or infinite voxels"),
    ],
)
def test_bad_files_are_named(tmp_path, name, make, message):
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as caught:
        load_nifti(path)
    assert name in str(caught.value)


def test_truncated_file_is_named(tmp_path):
    path = write(tmp_path / "whole.nii.gz", np.random.default_rng(2).normal(size=(20, 20, 20)))
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.nii.gz: not a readable NIfTI"):
        load_nifti(truncated)


def test_a_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    volume = Volume(torch.zeros(1, 2, 2, 2), np.eye(4))

    def fail(image, path):
        open(path, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(volume_module.nib, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        save_nifti(volume, tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_the_atomic_writers_keep_their_old_import_path():
    from brainkernels import atomic
    from brainkernels.data import atomic as old_path

    assert (old_path.atomic_path, old_path.write_csv) == (atomic.atomic_path, atomic.write_csv)


def test_modalities_must_share_shape_and_affine(tmp_path):
    t1 = load_nifti(write(tmp_path / "t1.nii.gz", np.ones((3, 3, 3))))
    t2 = load_nifti(write(tmp_path / "t2.nii.gz", np.ones((3, 3, 3)) * 2))
    assert torch.equal(stack_modalities({"t1": t1, "t2": t2}).data[:, 0, 0, 0], torch.tensor([1.0, 2.0]))
    shifted = load_nifti(write(tmp_path / "flair.nii.gz", np.ones((3, 3, 3)), np.diag([2.0, 1, 1, 1])))
    with pytest.raises(ValueError, match="flair.nii.gz: affine differs from .*t1.nii.gz"):
        stack_modalities({"t1": t1, "flair": shifted})
    small = load_nifti(write(tmp_path / "t1ce.nii.gz", np.ones((3, 3, 2))))
    with pytest.raises(ValueError, match=r"t1ce.nii.gz: shape \(3, 3, 2\) differs"):
        stack_modalities({"t1": t1, "t1ce": small})
