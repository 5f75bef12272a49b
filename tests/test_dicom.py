"""DICOM import: series written with pydicom from synthetic CT volumes with known affines come back
equal (HU and affine); every kind of bad series is refused naming the series; one non-contrast
scan is chosen per study and the CSV says why."""

from dataclasses import replace

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless, generate_uid
from scipy.spatial.transform import Rotation

from brainkernels import cli
from brainkernels.data.dicom import DicomSeriesError, Series, SeriesCriteria, import_study, read_series, read_study
from brainkernels.data.synth.ct import HeadFindings, render_ct
from brainkernels.data.synth.dicom import write_ct_series, write_ct_study
from brainkernels.data.synth.subject import draw_subject
from brainkernels.data.volume import Volume, load_nifti


@pytest.fixture(scope="module")
def head():
    return render_ct(draw_subject(7), HeadFindings(), 24).image


def oblique(volume: Volume) -> Volume:
    """The volume with voxels of 7 x 6 x 5 mm turned 20, -10 and 35 degrees about x, y, z."""
    affine = volume.affine.copy()
    affine[:3, :3] = Rotation.from_euler("xyz", [20, -10, 35], degrees=True).as_matrix() @ np.diag([7.0, 6.0, 5.0])
    return replace(volume, affine=affine)


def write(volume: Volume, folder, **fields):
    return write_ct_series(volume, folder, study_uid=fields.pop("study_uid", generate_uid()), patient_id="P1", **fields)


def only_series(folder):
    (series,) = read_study(folder)
    return series


def small_volume(slices=6) -> Volume:
    data = torch.from_numpy(np.random.default_rng(0).integers(-1000, 1500, (1, 8, 7, slices)).astype(np.float32))
    return Volume(data, np.diag([0.5, 0.6, 2.0, 1.0]))


@pytest.mark.parametrize("geometry", ["axial", "oblique"])
def test_a_series_reads_back_in_hounsfield_units_with_its_affine(head, tmp_path, geometry):
    volume = head if geometry == "axial" else oblique(head)
    write(volume, tmp_path / "study" / "series")
    read = read_series(only_series(tmp_path / "study"))
    # The reader reorients to RAS as load_nifti does: compare with nibabel's view of the same volume.
    expected = nib.as_closest_canonical(nib.Nifti1Image(volume.data[0].numpy(), volume.affine))
    assert torch.equal(read.data[0], torch.from_numpy(np.asarray(expected.dataobj, dtype=np.float32)))
    np.testing.assert_allclose(read.affine, expected.affine, atol=1e-4)
    assert read.data.min() < -900 and read.data.max() > 300  # air and bone in HU, not stored values


def test_slices_are_ordered_by_position_not_by_file_name(tmp_path):
    volume = small_volume()
    paths = write(volume, tmp_path / "study")
    for path, new_name in zip(paths, ["z.dcm", "a.dcm", "m.dcm", "b.dcm", "y.dcm", "c.dcm"]):
        path.rename(path.with_name(new_name))
    assert torch.equal(read_series(only_series(tmp_path / "study")).data, volume.data)


def test_a_missing_slice_is_refused(tmp_path):
    paths = write(small_volume(), tmp_path / "study", series_number=3, description="CT 5mm")
    paths[2].unlink()
    with pytest.raises(DicomSeriesError, match=r"study: series 3 'CT 5mm': missing slices \(1 in all"):
        read_series(only_series(tmp_path / "study"))


def rewrite(path, **attributes):
    dataset = pydicom.dcmread(path)
    for name, value in attributes.items():
        setattr(dataset, name, value)
    dataset.save_as(path)


def test_inconsistent_spacing_is_refused(tmp_path):
    paths = write(small_volume(), tmp_path / "study")
    position = pydicom.dcmread(paths[3]).ImagePositionPatient
    rewrite(paths[3], ImagePositionPatient=[position[0], position[1], float(position[2]) + 0.7])
    with pytest.raises(DicomSeriesError, match="inconsistent slice spacing"):
        read_series(only_series(tmp_path / "study"))


def test_mixed_orientations_are_refused(tmp_path):
    paths = write(small_volume(), tmp_path / "study")
    turned = Rotation.from_euler("z", 5, degrees=True).as_matrix()
    rewrite(paths[1], ImageOrientationPatient=[*turned[:, 0], *turned[:, 1]])
    with pytest.raises(DicomSeriesError, match="mixed orientations"):
        read_series(only_series(tmp_path / "study"))


def test_duplicate_positions_are_refused(tmp_path):
    paths = write(small_volume(), tmp_path / "study")
    rewrite(paths[1], ImagePositionPatient=pydicom.dcmread(paths[0]).ImagePositionPatient)
    with pytest.raises(DicomSeriesError, match="two slices at the same position"):
        read_series(only_series(tmp_path / "study"))


def test_undecodable_compressed_pixel_data_is_refused(tmp_path):
    paths = write(small_volume(), tmp_path / "study")
    for path in paths:
        dataset = pydicom.dcmread(path)
        dataset.file_meta.TransferSyntaxUID = JPEGLSLossless
        dataset.PixelData = encapsulate([b"\xff\xd8 not a JPEG-LS codestream"])
        dataset["PixelData"].VR = "OB"
        dataset.save_as(path)
    with pytest.raises(DicomSeriesError, match="cannot decode the pixel data of CT0000.dcm .transfer syntax JPEG-LS"):
        read_series(only_series(tmp_path / "study"))


@pytest.mark.parametrize("modality", ["SR", "RTSTRUCT"])
def test_non_image_objects_are_refused_and_the_image_series_chosen(head, tmp_path, modality):
    study_uid = generate_uid()
    write(head, tmp_path / "study" / "ct", study_uid=study_uid)
    report = pydicom.dcmread(next((tmp_path / "study" / "ct").iterdir()), stop_before_pixels=True)
    for name in ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(report, name)
    report.Modality, report.SeriesInstanceUID, report.SeriesNumber = modality, generate_uid(), 99
    report.save_as(tmp_path / "study" / "report.dcm")
    volume, decisions = import_study(tmp_path / "study")
    assert volume is not None and torch.equal(volume.data, read_series(read_study(tmp_path / "study")[0]).data)
    (refused,) = [decision for decision in decisions if decision.status == "refused"]
    assert refused.series.number == 99 and refused.reason == f"not an image series (modality {modality})"


def test_a_gantry_tilt_is_resampled_onto_an_orthogonal_grid(tmp_path):
    # Slices 2 mm apart along z, each shifted 2 tan(15 deg) mm along y: a 15 degree gantry tilt.
    shape, step = (10, 12, 8), np.array([0.0, 2 * np.tan(np.radians(15)), 2.0])
    tilted = np.eye(4)
    tilted[:3, :3] = np.column_stack([[1.5, 0, 0], [0, 1.5, 0], step])
    index = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)
    world = index @ tilted[:3, :3].T + tilted[:3, 3]
    hu = np.rint(world @ [3.0, 5.0, -4.0]).astype(np.float32)  # linear in world mm, so trilinear is exact
    write(Volume(torch.from_numpy(hu)[None], tilted), tmp_path / "study")
    volume, (decision,) = import_study(tmp_path / "study")
    assert decision.status == "chosen" and "gantry tilt of 15.0 degrees resampled" in decision.reason
    rotation = volume.affine[:3, :3] / np.array(volume.spacing)
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(3), atol=1e-9)
    output_index = np.stack(np.meshgrid(*map(np.arange, volume.shape), indexing="ij"), axis=-1)
    output_world = output_index @ volume.affine[:3, :3].T + volume.affine[:3, 3]
    source = (output_world - tilted[:3, 3]) @ np.linalg.inv(tilted[:3, :3]).T
    scanned = ((source > -1e-6) & (source < np.array(shape) - 1 + 1e-6)).all(axis=-1)
    assert scanned.mean() > 0.6
    expected = output_world @ [3.0, 5.0, -4.0]
    assert np.abs(volume.data[0].numpy()[scanned] - expected[scanned]).max() <= 1.0  # the writer's rounding
    assert (volume.data[0].numpy()[~scanned] == hu.min()).all()  # outside the scanned field: air


@pytest.mark.parametrize(("options", "chosen"), [
    ([], 2),
    (["--slice-thickness", "20"], 3),
    (["--kernel", "h70"], 4),
    (["--description", "5mm"], 3),
])  # fmt: skip
def test_import_dicom_chooses_one_non_contrast_series_per_study(head, tmp_path, options, chosen):
    write_ct_study(head, tmp_path / "dicom" / "CQ500-CT-1", patient_id="CQ500-CT-1")
    broken = write(small_volume(), tmp_path / "dicom" / "CQ500-CT-2" / "only")
    broken[3].unlink()
    status = cli.main(["import-dicom", "--in", str(tmp_path / "dicom"), "--out", str(tmp_path / "nifti"), "--quiet",
                       *options])
    assert status == 1  # CQ500-CT-2 has no usable series
    table = pd.read_csv(tmp_path / "nifti" / "selection.csv").set_index(["study", "series_number"])
    assert table.loc[("CQ500-CT-1", chosen), "status"] == "chosen"
    assert (table["status"] == "chosen").sum() == 1
    assert table.loc[("CQ500-CT-1", 5), "reason"].startswith("contrast-enhanced")
    assert table.loc[("CQ500-CT-2", 1), "status"] == "refused"
    assert table.loc[("CQ500-CT-2", 1), "reason"].startswith("missing slices")
    assert sorted(path.name for path in (tmp_path / "nifti").iterdir()) == ["CQ500-CT-1.nii.gz", "selection.csv"]
    imported = load_nifti(tmp_path / "nifti" / "CQ500-CT-1.nii.gz")
    expected = read_series([s for s in read_study(tmp_path / "dicom" / "CQ500-CT-1") if s.number == chosen][0])
    assert torch.equal(imported.data, expected.data)
    np.testing.assert_allclose(imported.affine, expected.affine, atol=1e-4)


def test_bad_criteria_and_folders_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="kernel '\\(' is not a regular expression"):
        SeriesCriteria(kernel="(")
    (tmp_path / "in").mkdir()
    assert cli.main(["import-dicom", "--in", str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 2
    assert "no study folders" in capsys.readouterr().err


@pytest.mark.parametrize(("description", "agent", "contrast"), [
    ("CT POST CONTRAST", "", True),
    ("CT C+ 5mm", "", True),
    ("CT 5mm", "Iohexol", True),
    ("CT PRE CONTRAST THIN", "", False),
    ("CT Plain", "", False),
    ("CT 5mm", "NONE", False),
])  # fmt: skip
def test_contrast_is_read_from_the_agent_or_else_the_description(description, agent, contrast):
    series = Series("study", "1.2", 1, description, "CT", "H30s", 5.0, agent, headers=(), paths=())
    assert series.contrast is contrast
