"""Volumes: a float32 (C, D, H, W) tensor with its NIfTI geometry, loaded and saved with nibabel.

Axes: D, H, W are the NIfTI array axes i, j, k after reorientation to the closest canonical (RAS)
orientation, so ``affine`` maps a voxel index (d, h, w) to scanner millimetres directly. Outputs
saved with an input's geometry overlay that input in any viewer.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import Tensor

from brainkernels.data.atomic import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Volume:
    """Image data (C, D, H, W) float32 plus the voxel-to-world affine (4x4, RAS millimetres)."""

    data: Tensor
    affine: np.ndarray
    path: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, Tensor) or self.data.dim() != 4:
            raise ValueError(f"Volume.data must be a (C, D, H, W) tensor; got {getattr(self.data, 'shape', self.data)!r}")
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
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    def with_data(self, data: Tensor, affine: np.ndarray | None = None) -> Volume:
        """A volume with new data (and optionally a new affine), keeping the source path."""
        return replace(self, data=data, affine=self.affine if affine is None else affine)


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def load_nifti(path: str | os.PathLike, *, allow_nonfinite: bool = False) -> Volume:
    """Load a 3D or 4D NIfTI file (4D: the 4th axis becomes channels), reoriented to RAS."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not is_nifti(path):
        raise ValueError(f"{path}: not a NIfTI file (expected a .nii or .nii.gz name)")
    try:
        image = nib.as_closest_canonical(nib.load(path))
        array = np.asarray(image.dataobj, dtype=np.float32)
    except (nib.filebasedimages.ImageFileError, EOFError, OSError, zlib.error, ValueError) as error:
        raise ValueError(f"{path}: not a readable NIfTI file ({error})") from error
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
