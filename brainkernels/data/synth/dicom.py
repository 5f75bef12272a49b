"""CT volumes written as DICOM series, one file per slice, as a scanner exports them: the
stand-in for CQ500's DICOM studies in the tests and in the full-size run of the real-data path.

A slice is a (D, H) plane of the volume at one W index: its columns run along D, its rows along
H, and slices follow W, whatever direction the affine gives those axes (an oblique or a sheared
affine writes an oblique or a gantry-tilted series).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from brainkernels.atomic import atomic_path
from brainkernels.data.volume import Volume

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
RESCALE_INTERCEPT = -1024.0
"""Stored values are HU + 1024, as unsigned 16-bit, the commonest CT export."""


def write_ct_series(
    volume: Volume,
    folder: str | Path,
    *,
    study_uid: str,
    patient_id: str,
    series_number: int = 1,
    description: str = "CT PLAIN THIN",
    kernel: str = "STANDARD",
    contrast_agent: str | None = None,
) -> list[Path]:
    """Write ``volume`` (one channel, whole Hounsfield units) into ``folder`` as ``CT%04d.dcm``
    files; returns their paths in slice order."""
    if volume.channels != 1:
        raise ValueError(f"volume must have one channel; got {volume.channels}")
    hu = volume.data[0].numpy()
    stored = np.rint(hu - RESCALE_INTERCEPT)
    if stored.min() < 0 or stored.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"volume values must lie in [{RESCALE_INTERCEPT:.0f}, {65535 + RESCALE_INTERCEPT:.0f}] HU")
    lps = RAS_TO_LPS @ volume.affine[:3]
    column_step, row_step, slice_step, origin = lps.T
    series_uid = generate_uid()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(volume.shape[2]):
        dataset = _slice_dataset(patient_id, study_uid, series_uid)
        dataset.SeriesNumber = series_number
        dataset.SeriesDescription = description
        dataset.ConvolutionKernel = kernel
        if contrast_agent is not None:
            dataset.ContrastBolusAgent = contrast_agent
        dataset.InstanceNumber = index + 1
        dataset.SliceThickness = float(np.linalg.norm(slice_step))
        dataset.ImageOrientationPatient = [*_unit(column_step), *_unit(row_step)]
        dataset.ImagePositionPatient = (origin + index * slice_step).tolist()
        dataset.PixelSpacing = [float(np.linalg.norm(row_step)), float(np.linalg.norm(column_step))]
        # DICOM pixel rows run along H and columns along D: the transpose of the (D, H) plane.
        dataset.Rows, dataset.Columns = volume.shape[1], volume.shape[0]
        dataset.PixelData = np.ascontiguousarray(stored[:, :, index].T, dtype=np.uint16).tobytes()
        path = folder / f"CT{index:04d}.dcm"
        with atomic_path(path) as temporary:
            dataset.save_as(temporary, enforce_file_format=True)
        paths.append(path)
    return paths


def _unit(vector: np.ndarray) -> list[float]:
    return (vector / np.linalg.norm(vector)).tolist()


def _slice_dataset(patient_id: str, study_uid: str, series_uid: str) -> pydicom.Dataset:
    """The attributes every slice of a CT series shares."""
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = sop_uid
    dataset.Modality = "CT"
    dataset.PatientID = patient_id
    dataset.PatientName = patient_id
    dataset.StudyInstanceUID = study_uid
    dataset.SeriesInstanceUID = series_uid
    dataset.StudyDate = "20260101"
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    dataset.RescaleSlope = 1
    dataset.RescaleIntercept = RESCALE_INTERCEPT
    dataset.RescaleType = "HU"
    return dataset


def write_ct_study(volume: Volume, folder: str | Path, *, patient_id: str) -> None:
    """The series a CQ500 study holds for one head, all made from ``volume``: thin slices with a
    soft-tissue kernel (series 2), about 5 mm slices (3), thin slices with a bone kernel (4) and
    a post-contrast series (5, flagged by its contrast agent; the values are the same)."""
    folder = Path(folder)
    study_uid = generate_uid()
    every = max(2, round(5.0 / volume.spacing[2]))
    thick = volume.with_data(volume.data[..., ::every], volume.affine @ np.diag([1.0, 1.0, every, 1.0]))
    series = (
        (2, "CT PLAIN THIN", "H30s", volume, None),
        (3, "CT 5mm", "H30s", thick, None),
        (4, "CT BONE THIN", "H70h", volume, None),
        (5, "CT POST CONTRAST", "H30s", volume, "Iohexol"),
    )
    for number, description, kernel, scan, agent in series:
        write_ct_series(scan, folder / f"series{number}", study_uid=study_uid, patient_id=patient_id,
                        series_number=number, description=description, kernel=kernel, contrast_agent=agent)
