"""DICOM series to volumes: group a study's files by series, check each series' geometry, choose
one scan per study as the PPR paper did, and read it in Hounsfield units with its RAS affine.

The geometry comes from the headers alone (orientation, pixel spacing and the position of every
slice), so every series of a study is checked before any pixel is decoded. A series whose slices
do not form one regular grid is refused, never patched: a missing slice, an uneven step or a
second orientation would otherwise put anatomy at the wrong place without a trace. A gantry tilt
is the one irregular grid that is resampled: it is a regular but sheared grid, common in head CT,
and interpolating it onto an orthogonal grid along the slices loses nothing a 1 mm resampling
keeps (the CSV notes the tilt).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import scipy.ndimage
import torch
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from brainkernels.data.volume import Volume
from brainkernels.errors import BrainkernelsError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
NON_IMAGE_MODALITIES = {"SR", "RTSTRUCT", "RTPLAN", "RTRECORD", "PR", "KO", "SEG", "DOC", "REG"}
_ORIENTATION_TOLERANCE = 1e-4
_POSITION_TOLERANCE_MM = 0.01
_SPACING_TOLERANCE = 0.01
"""Relative: slice steps may differ by 1 % (scanners round positions to a few micrometres)."""
_TILT_TOLERANCE_DEGREES = 0.01
_CONTRAST_WORDS = re.compile(r"contrast|\bpost\b|\bc\+|\bcect\b", re.IGNORECASE)
_NON_CONTRAST_WORDS = re.compile(r"\bpre\b|\bnon|plain|without|native", re.IGNORECASE)
_BONE_WORDS = re.compile(r"bone", re.IGNORECASE)


class DicomSeriesError(BrainkernelsError):
    """A series that cannot be read as one volume; the message names the series."""


@dataclass(frozen=True)
class SeriesCriteria:
    """Which series of a study to take, besides the paper's rule (no contrast agent).

    ``slice_thickness``: the series whose slice thickness is closest (default: the thinnest);
    ``kernel``, ``description``: regular expressions that the convolution kernel or the series
    description must contain (case-insensitive). Without ``kernel``, series that look like bone
    reconstructions are taken only when nothing else is left."""

    slice_thickness: float | None = None
    kernel: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        if self.slice_thickness is not None and not self.slice_thickness > 0:
            raise ValueError(f"slice_thickness must be positive millimetres; got {self.slice_thickness!r}")
        for name in ("kernel", "description"):
            pattern = getattr(self, name)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as error:
                    raise ValueError(f"{name} {pattern!r} is not a regular expression: {error}") from None


@dataclass(frozen=True)
class Series:
    """The files of one series of a study and what its headers say."""

    study: str
    uid: str
    number: int | None
    description: str
    modality: str
    kernel: str
    slice_thickness: float | None
    contrast_agent: str
    headers: tuple[pydicom.Dataset, ...] = field(repr=False)
    paths: tuple[Path, ...] = field(repr=False)

    @property
    def name(self) -> str:
        """How messages and the CSV name the series."""
        return f"{self.study}: series {self.number if self.number is not None else '?'} {self.description!r}"

    @property
    def contrast(self) -> bool:
        """Contrast-enhanced, by the agent attribute or else by the description's words."""
        if self.contrast_agent.strip() and self.contrast_agent.strip().lower() not in {"none", "no"}:
            return True
        return bool(_CONTRAST_WORDS.search(self.description)) and not _NON_CONTRAST_WORDS.search(self.description)

    @property
    def bone(self) -> bool:
        return bool(_BONE_WORDS.search(self.kernel) or _BONE_WORDS.search(self.description))


@dataclass(frozen=True)
class Geometry:
    """A series' voxel grid: ``affine`` (RAS) maps (column, row, slice) indices to millimetres;
    ``order`` lists the headers by slice position; ``tilt_degrees`` is the gantry tilt."""

    affine: np.ndarray
    order: tuple[int, ...]
    tilt_degrees: float


def read_study(folder: str | Path, study: str | None = None) -> list[Series]:
    """The series of the DICOM files under ``folder`` (any depth), in series-number order.
    Files that are not DICOM (a README, a DICOMDIR without images) are passed over."""
    folder = Path(folder)
    study = study or folder.name
    groups: dict[str, list[tuple[pydicom.Dataset, Path]]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError):
            continue
        uid = str(header.get("SeriesInstanceUID", ""))
        if uid:
            groups.setdefault(uid, []).append((header, path))
    series = [_series(study, uid, members) for uid, members in groups.items()]
    return sorted(series, key=lambda s: (s.number is None, s.number or 0, s.uid))


def _series(study: str, uid: str, members: list[tuple[pydicom.Dataset, Path]]) -> Series:
    first = members[0][0]
    thickness = first.get("SliceThickness")
    number = first.get("SeriesNumber")
    return Series(
        study=study,
        uid=uid,
        number=int(number) if number not in (None, "") else None,
        description=str(first.get("SeriesDescription", "")),
        modality=str(first.get("Modality", "")),
        kernel=_text(first.get("ConvolutionKernel", "")),
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
        contrast_agent=str(first.get("ContrastBolusAgent", "")),
        headers=tuple(header for header, _ in members),
        paths=tuple(path for _, path in members),
    )


def _text(value: object) -> str:
    """A DICOM string or multi-valued string as one string."""
    return "\\".join(str(v) for v in value) if isinstance(value, pydicom.multival.MultiValue) else str(value)


def series_geometry(series: Series) -> Geometry:
    """Check that the slices of ``series`` form one regular grid and return it; raises
    :class:`DicomSeriesError` naming the series and the problem."""
    if series.modality in NON_IMAGE_MODALITIES or any("Rows" not in header for header in series.headers):
        raise DicomSeriesError(f"{series.name}: not an image series (modality {series.modality or 'unknown'})")
    if len(series.headers) < 2:
        raise DicomSeriesError(f"{series.name}: a single slice is not a volume")
    for attribute in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        lacking = [path.name for header, path in zip(series.headers, series.paths) if attribute not in header]
        if lacking:
            raise DicomSeriesError(f"{series.name}: {len(lacking)} slices lack {attribute} (first: {lacking[0]})")
    if len({(int(h.Rows), int(h.Columns)) for h in series.headers}) > 1:
        raise DicomSeriesError(f"{series.name}: slices of different sizes")
    orientations = np.array([[float(v) for v in h.ImageOrientationPatient] for h in series.headers])
    if np.abs(orientations - orientations[0]).max() > _ORIENTATION_TOLERANCE:
        raise DicomSeriesError(f"{series.name}: mixed orientations (ImageOrientationPatient differs between slices)")
    spacings = np.array([[float(v) for v in h.PixelSpacing] for h in series.headers])
    if np.abs(spacings - spacings[0]).max() > _POSITION_TOLERANCE_MM:
        raise DicomSeriesError(f"{series.name}: pixel spacing differs between slices")

    along_row, along_column = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(along_row, along_column)
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in series.headers])
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    step = _slice_step(series, positions, normal)
    row_spacing, column_spacing = spacings[0]
    lps = np.eye(4)
    lps[:3, 0] = along_row * column_spacing
    lps[:3, 1] = along_column * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    tilt = math.degrees(math.atan2(np.linalg.norm(step - (step @ normal) * normal), step @ normal))
    return Geometry(LPS_TO_RAS @ lps, tuple(int(i) for i in order), tilt)


def _slice_step(series: Series, positions: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """The position step from one slice to the next, after checking that every slice lies on it."""
    depths = positions @ normal
    gaps = np.diff(depths)
    if gaps.min() < _POSITION_TOLERANCE_MM:
        at = depths[int(np.argmin(gaps))]
        raise DicomSeriesError(f"{series.name}: two slices at the same position ({at:.2f} mm along the slice normal)")
    nominal = float(np.median(gaps))
    uneven = np.abs(gaps - nominal) > _SPACING_TOLERANCE * nominal + _POSITION_TOLERANCE_MM
    if uneven.any():
        where = int(np.argmax(uneven))
        multiple = gaps[where] / nominal
        if round(multiple) >= 2 and abs(multiple - round(multiple)) < 0.1:
            missing = sum(max(round(gap / nominal) - 1, 0) for gap in gaps)
            raise DicomSeriesError(
                f"{series.name}: missing slices ({missing} in all; the first gap is {gaps[where]:.2f} mm after the "
                f"slice at {depths[where]:.2f} mm, where slices are {nominal:.2f} mm apart)"
            )
        raise DicomSeriesError(
            f"{series.name}: inconsistent slice spacing (steps from {gaps.min():.3f} to {gaps.max():.3f} mm)"
        )
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    expected = positions[0] + np.arange(len(positions))[:, None] * step
    off_line = float(np.linalg.norm(positions - expected, axis=1).max())
    if off_line > _SPACING_TOLERANCE * nominal + _POSITION_TOLERANCE_MM:
        raise DicomSeriesError(f"{series.name}: slice positions do not lie on a line (off by up to {off_line:.2f} mm)")
    return step


def read_series(series: Series, geometry: Geometry | None = None) -> Volume:
    """The series as a one-channel volume in Hounsfield units (the modality LUT: rescale slope
    and intercept, per slice), reoriented to RAS; a gantry tilt is resampled onto an orthogonal
    grid (trilinear within each slice plane, air outside the scanned field)."""
    geometry = geometry or series_geometry(series)
    slices = [_pixels(series, index) for index in geometry.order]
    array = np.stack(slices, axis=-1).transpose(1, 0, 2)  # (rows, columns, slices) -> (column, row, slice)
    affine = geometry.affine
    if geometry.tilt_degrees > _TILT_TOLERANCE_DEGREES:
        array, affine = _untilt(array, affine)
    image = nib.as_closest_canonical(nib.Nifti1Image(array, affine))
    data = np.ascontiguousarray(np.asanyarray(image.dataobj), dtype=np.float32)
    return Volume(torch.from_numpy(data)[None], image.affine)


def _pixels(series: Series, index: int) -> np.ndarray:
    path = series.paths[index]
    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError) as error:
        raise DicomSeriesError(f"{series.name}: cannot read {path}: {error}") from None
    try:
        return apply_modality_lut(dataset.pixel_array, dataset).astype(np.float32)
    except (NotImplementedError, RuntimeError, ValueError, AttributeError) as error:
        syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown")
        raise DicomSeriesError(
            f"{series.name}: cannot decode the pixel data of {path.name} (transfer syntax "
            f"{getattr(syntax, 'name', syntax)}): {str(error).splitlines()[0]}; install the decoder pydicom "
            "names (e.g. pylibjpeg with pylibjpeg-libjpeg) or decompress the files (gdcmconv --raw)"
        ) from None


def _untilt(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resample a sheared (gantry-tilted) grid onto the orthogonal grid with the same slice
    planes, widened so that every scanned voxel stays inside."""
    columns = affine[:3, :3]
    normal = np.cross(columns[:, 0], columns[:, 1])
    normal /= np.linalg.norm(normal)
    orthogonal = affine.copy()
    orthogonal[:3, 2] = (columns[:, 2] @ normal) * normal
    # Per slice, the in-plane shift of the tilted slice in voxels of the orthogonal grid.
    shear = np.linalg.solve(orthogonal[:3, :3], columns[:, 2])[:2]
    reach = shear * (array.shape[2] - 1)
    low = np.minimum(reach, 0)
    grown = np.ceil(np.abs(reach)).astype(int)
    output_shape = (array.shape[0] + grown[0], array.shape[1] + grown[1], array.shape[2])
    matrix = np.array([[1.0, 0.0, -shear[0]], [0.0, 1.0, -shear[1]], [0.0, 0.0, 1.0]])
    offset = np.array([low[0], low[1], 0.0])
    resampled = scipy.ndimage.affine_transform(
        array, matrix, offset, output_shape=output_shape, order=1, mode="constant", cval=float(array.min())
    )
    orthogonal[:3, 3] = affine[:3, :3] @ np.array([low[0], low[1], 0.0]) + affine[:3, 3]
    return resampled.astype(np.float32), orthogonal


@dataclass(frozen=True)
class Decision:
    """What became of one series: ``status`` chosen, skipped or refused, and why."""

    series: Series
    status: str
    reason: str


def import_study(
    folder: str | Path, criteria: SeriesCriteria = SeriesCriteria(), study: str | None = None
) -> tuple[Volume | None, list[Decision]]:
    """Choose and read one scan of the study in ``folder``, as the PPR paper did: one scan per
    patient, without contrast, further chosen by ``criteria``. Every series is checked
    (:func:`series_geometry`) and ranked; the best one that reads is returned with a decision for
    every series in series-number order (chosen, or skipped or refused with the reason). No scan:
    ``(None, decisions)``."""
    decisions: list[Decision] = []
    candidates: list[tuple[Series, Geometry]] = []
    for each in read_study(folder, study):
        try:
            geometry = series_geometry(each)
        except DicomSeriesError as error:
            decisions.append(Decision(each, "refused", _reason(error, each)))
            continue
        excluded = _excluded(each, criteria)
        if excluded:
            decisions.append(Decision(each, "skipped", excluded))
        else:
            candidates.append((each, geometry))
    candidates.sort(key=lambda pair: _rank(pair[0], criteria))
    volume, chosen = None, None
    for each, geometry in candidates:
        if volume is not None:
            decisions.append(Decision(each, "skipped", f"series {chosen.number} ranks higher"))
            continue
        try:
            volume = read_series(each, geometry)
        except DicomSeriesError as error:
            decisions.append(Decision(each, "refused", _reason(error, each)))
            continue
        chosen = each
        tilt = geometry.tilt_degrees
        note = f"; gantry tilt of {tilt:.1f} degrees resampled" if tilt > _TILT_TOLERANCE_DEGREES else ""
        decisions.append(Decision(each, "chosen", _why_chosen(criteria) + note))
    return volume, sorted(decisions, key=lambda decision: (decision.series.number is None, decision.series.number or 0))


def _reason(error: DicomSeriesError, series: Series) -> str:
    return str(error).removeprefix(f"{series.name}: ")


def _excluded(series: Series, criteria: SeriesCriteria) -> str:
    if series.contrast:
        return "contrast-enhanced (one non-contrast scan per patient, as the paper)"
    if criteria.kernel is not None and not re.search(criteria.kernel, series.kernel, re.IGNORECASE):
        return f"kernel {series.kernel!r} does not match {criteria.kernel!r}"
    if criteria.description is not None and not re.search(criteria.description, series.description, re.IGNORECASE):
        return f"description does not match {criteria.description!r}"
    return ""


def _rank(series: Series, criteria: SeriesCriteria) -> tuple:
    thickness = series.slice_thickness if series.slice_thickness is not None else math.inf
    distance = thickness if criteria.slice_thickness is None else abs(thickness - criteria.slice_thickness)
    return (criteria.kernel is None and series.bone, distance, -len(series.headers), series.number or 0)


def _why_chosen(criteria: SeriesCriteria) -> str:
    thickness = ("thinnest slices" if criteria.slice_thickness is None
                 else f"slices closest to {criteria.slice_thickness} mm")
    return f"non-contrast, {thickness}" + ("" if criteria.kernel else ", soft-tissue kernel preferred")
