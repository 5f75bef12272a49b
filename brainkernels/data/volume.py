"""Volumes: a float32 (C, D, H, W) tensor with its NIfTI geometry, loaded and saved with nibabel.

Axes: D, H, W are the NIfTI array axes i, j, k after reorientation to the closest canonical (RAS)
orientation, so ``affine`` maps a voxel index (d, h, w) to scanner millimetres directly. Outputs
saved with an input's geometry overlay that input in any viewer.
"""

from __future__ import annotations

import math
import os
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import Tensor

from brainkernels.atomic import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MAX_VOXELS_VARIABLE = "BRAINKERNELS_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 1024**3
"""4 GiB as float32; a 512 x 512 x 600 CT has 157 million voxels."""
DEFLATE_MAX_RATIO = 1032
"""The largest ratio by which deflate (gzip) can compress any data (zlib technical details)."""


@dataclass(frozen=True)
class Volume:
    """Image data (C, D, H, W) float32 plus the voxel-to-world affine (4x4, RAS millimetres)."""

    data: Tensor
    affine: np.ndarray
    path: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, Tensor) or self.data.dim() != 4:
            raise ValueError("Volume.data must be a (C, D, H, W) tensor; "
                             f"got {getattr(self.data, 'shape', self.data)!r}")
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.isfinite(affine).all():
            raise ValueError(f"Volume.affine must be a finite 4x4 matrix; got shape {affine.shape}")
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (D, H, W)."""
        return tuple(self.data.shape[1:])

    @property
    def channels(self) -> int:
        return self.data.shape[0]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in millimetres along D, H, W."""
        return voxel_spacing(self.affine)

    def with_data(self, data: Tensor, affine: np.ndarray | None = None) -> Volume:
        """A volume with new data (and optionally a new affine), keeping the source path."""
        return replace(self, data=data, affine=self.affine if affine is None else affine)


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in millimetres along the axes of ``affine``."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def nifti_files_below(folder: str | os.PathLike) -> list[Path]:
    """The NIfTI files in ``folder`` and below, sorted. Hidden entries (among them the temporaries
    of unfinished atomic writes) are passed over; an entry named like a NIfTI file that is not
    one (a folder, a broken or looping symbolic link) is named in a warning, and in the error
    when no file is found."""
    folder = Path(folder)
    found, skipped = [], []
    for parent, folders, names in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        skipped += [Path(parent) / name for name in folders if is_nifti(name)]
        for name in names:
            path = Path(parent) / name
            if is_nifti(name) and not name.startswith("."):
                (found if path.is_file() else skipped).append(path)
    if not found and not any(entry for entry in folder.iterdir() if not entry.name.startswith(".")):
        raise ValueError(f"{folder}: the folder is empty")
    if not found:
        also = f" (skipped {len(skipped)} entries named like one, e.g. {skipped[0]}: {_not_a_file(skipped[0])})" \
            if skipped else ""
        raise ValueError(f"{folder}: no .nii or .nii.gz files in the folder or below it{also}")
    for path in skipped:
        warnings.warn(f"skipped {path}: {_not_a_file(path)}", stacklevel=2)
    return sorted(found)


def _not_a_file(path: Path) -> str:
    if path.is_symlink():
        return "a broken or looping symbolic link"
    return "a folder, not a file" if path.is_dir() else "not a regular file"


def max_voxels() -> int:
    """The most voxels a volume may declare: ``BRAINKERNELS_MAX_VOXELS``, default ``DEFAULT_MAX_VOXELS``."""
    text = os.environ.get(MAX_VOXELS_VARIABLE)
    if text is None:
        return DEFAULT_MAX_VOXELS
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(f"environment variable {MAX_VOXELS_VARIABLE} must be a positive integer; got {text!r}")
    return limit


def check_voxel_count(shape: tuple[int, ...], what: str) -> None:
    """Refuse a volume of ``shape`` larger than ``max_voxels()``, before anything is allocated."""
    voxels, limit = math.prod(shape), max_voxels()
    if voxels > limit:
        raise ValueError(f"{what} {' x '.join(map(str, shape))} = {voxels:,} voxels, more than the limit of "
                         f"{limit:,} (set {MAX_VOXELS_VARIABLE} to allow more)")


def _open_nifti(path: Path) -> nib.Nifti1Image:
    """The image with its header checked against the file; its data are not read yet. A header
    that declares more voxels than the file can hold is refused, so a damaged or forged header
    never makes the loader allocate gigabytes."""
    try:
        image = nib.load(path)
    except (nib.filebasedimages.ImageFileError, EOFError, OSError, zlib.error, ValueError) as error:
        raise ValueError(f"{path}: not a readable NIfTI file ({error})") from error
    check_voxel_count(image.shape, f"{path}: the header declares")
    data_bytes = math.prod(image.shape) * image.get_data_dtype().itemsize
    size = path.stat().st_size
    if path.name.endswith(".gz"):
        if data_bytes > DEFLATE_MAX_RATIO * size:
            raise ValueError(f"{path}: the header declares {data_bytes:,} bytes of voxels, more than a gzip file of "
                             f"{size:,} bytes can hold (damaged or forged header)")
    elif int(image.header["vox_offset"]) + data_bytes > size:
        raise ValueError(f"{path}: the header declares {data_bytes:,} bytes of voxels but the file has {size:,} bytes "
                         "(truncated)")
    return image


def read_header(path: str | os.PathLike) -> nib.Nifti1Header:
    """The checked header of a NIfTI file, without reading its voxels."""
    path = Path(path)
    _require_nifti_file(path)
    return _open_nifti(path).header


def read_grid(path: str | os.PathLike) -> tuple[tuple[int, int, int], np.ndarray]:
    """The spatial shape and affine :func:`load_nifti` gives the file (reoriented to RAS), from its
    header alone: checking that scans share a grid need not decompress their voxels."""
    path = Path(path)
    _require_nifti_file(path)
    image = _open_nifti(path)
    if len(image.shape) not in (3, 4):
        raise ValueError(f"{path}: expected a 3D or 4D image; got {len(image.shape)} dimensions {image.shape}")
    shape = image.shape[:3]
    orientation = nib.io_orientation(image.affine)
    # Reorienting a zero-stride stand-in moves its axes as load_nifti moves the voxels, at no cost.
    canonical = nib.apply_orientation(np.broadcast_to(np.int8(0), shape), orientation).shape
    return tuple(int(size) for size in canonical), image.affine @ nib.orientations.inv_ornt_aff(orientation, shape)


def _require_nifti_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not is_nifti(path):
        raise ValueError(f"{path}: not a NIfTI file (expected a .nii or .nii.gz name)")


def load_nifti(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> Volume:
    """Load a 3D or 4D NIfTI file (4D: the 4th axis becomes channels), reoriented to RAS."""
    path = Path(path)
    _require_nifti_file(path)
    image = _open_nifti(path)
    try:
        image = nib.as_closest_canonical(image)
        array = np.asarray(image.dataobj, dtype=np.float32)
    except (nib.filebasedimages.ImageFileError, EOFError, OSError, zlib.error, ValueError) as error:
        raise ValueError(f"{path}: not a readable NIfTI file ({error})") from error
    except MemoryError:
        raise MemoryError(f"{path}: {' x '.join(map(str, image.shape))} voxels do not fit in memory") from None
    if array.ndim == 3:
        array = array[None]
    elif array.ndim == 4:
        array = np.moveaxis(array, 3, 0)
    else:
        raise ValueError(f"{path}: expected a 3D or 4D image; got {array.ndim} dimensions {array.shape}")
    if not allow_nonfinite and not np.isfinite(array).all():
        raise ValueError(f"{path}: contains {int((~np.isfinite(array)).sum())} NaN or infinite voxels")
    return Volume(torch.from_numpy(np.ascontiguousarray(array)), image.affine, path)


def save_nifti(volume: Volume, path: str | os.PathLike, *, dtype: np.dtype | type | None = None) -> Path:
    """Write ``volume`` with its affine; ``dtype`` defaults to float32 (use uint8 for label maps).

    The file appears under ``path`` only once it is complete.
    """
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: output name must end in .nii or .nii.gz")
    array = volume.data.detach().cpu().numpy()
    array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, 3)
    array = array.astype(np.float32 if dtype is None else dtype, copy=False)
    image = nib.Nifti1Image(array, volume.affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    with atomic_path(path) as temporary:
        nib.save(image, temporary)
    return path


def stack_modalities(volumes: dict[str, Volume]) -> Volume:
    """Stack single-channel volumes of one subject (e.g. T1, T1ce, T2, FLAIR) into channels,
    after checking that every modality has the same shape and affine."""
    if not volumes:
        raise ValueError("stack_modalities: no volumes given")
    names = list(volumes)
    first = volumes[names[0]]
    for name in names[1:]:
        other = volumes[name]
        if other.shape != first.shape:
            raise ValueError(
                f"{other.path or name}: shape {other.shape} differs from {first.path or names[0]}: {first.shape}"
            )
        if not np.allclose(other.affine, first.affine, atol=1e-4):
            raise ValueError(f"{other.path or name}: affine differs from {first.path or names[0]} (not co-registered)")
    data = torch.cat([volumes[name].data for name in names], dim=0)
    return Volume(data, first.affine, first.path)
