"""INR inputs: a scan as the model sees it (intensity in [0, 1], in 2D its central axial slice),
the grid a model was trained on, and the training items (sampled voxels of one scan).

Training and evaluation read the prepared scans from the prepared-volume cache
(``preparation_request``, ``cached_input``): a training step gathers only its sampled voxels from
the mapped image."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from brainkernels.atomic import atomic_path
from brainkernels.data.cache import Entry, Request
from brainkernels.data.layouts.dhcp import DHCPScan
from brainkernels.data.preprocess import foreground_mask
from brainkernels.data.volume import Volume, load_nifti
from brainkernels.errors import BrainkernelsError

INTENSITY_PERCENTILE = 99.5
"""Intensities are divided by this percentile of the scan and clipped to [0, 1]: the paper's
images are in [0, 1], and a percentile ignores the few brightest (noise) voxels."""
GRID_FILE = "grid.json"


@dataclass(frozen=True)
class ModelGrid:
    """The grid a model was trained on: ``shape`` and ``spacing`` of the training scans (3D) and
    ``dims``; in 2D the model sees the central axial slice, ``shape[:2]``."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    dims: int

    @property
    def model_shape(self) -> tuple[int, ...]:
        return self.shape if self.dims == 3 else self.shape[:2]

    def save(self, folder: Path) -> None:
        with atomic_path(folder / GRID_FILE) as temporary:
            temporary.write_text(json.dumps(asdict(self)) + "\n")

    @classmethod
    def load(cls, folder: Path) -> ModelGrid:
        path = folder / GRID_FILE
        if not path.is_file():
            raise BrainkernelsError(f"{path}: no such file; {folder} is not a finished INR run")
        fields = json.loads(path.read_text())
        return cls(tuple(fields["shape"]), tuple(fields["spacing"]), fields["dims"])


@dataclass(frozen=True)
class ModelInput:
    """A scan prepared for the model: ``image`` on the model grid in [0, 1], ``foreground`` (bool,
    same shape), and what maps it back: ``scale`` (intensity units of 1.0) and ``affine`` (of
    the model grid: in 2D, of the slice)."""

    image: Tensor
    foreground: Tensor
    scale: float
    affine: np.ndarray

    def to_volume(self, image: Tensor) -> Volume:
        """A model-grid image in the scan's intensity units and geometry, for writing."""
        data = image.detach().float().cpu() * self.scale
        return Volume(data.reshape(1, *data.shape, *(() if data.dim() == 3 else (1,))), self.affine)


def central_slice_index(shape: tuple[int, int, int]) -> int:
    return shape[2] // 2


def prepare_input(volume: Volume, grid: ModelGrid, name: str) -> ModelInput:
    """``volume`` as the model sees it; a scan on another grid is refused, naming ``name``."""
    if volume.channels != 1:
        raise BrainkernelsError(f"{name}: expected a single T2-weighted image; got {volume.channels} channels")
    if volume.shape != tuple(grid.shape):
        raise BrainkernelsError(
            f"{name}: shape {volume.shape} differs from the model's grid {tuple(grid.shape)}; resample the scan to "
            f"the training grid (spacing {_millimetres(grid.spacing)}) first")
    if not np.allclose(volume.spacing, grid.spacing, rtol=1e-3):
        raise BrainkernelsError(
            f"{name}: voxel spacing {_millimetres(volume.spacing)} differs from the model's "
            f"{_millimetres(grid.spacing)}; resample the scan to the training grid first")
    data = volume.data[0]
    scale = float(np.percentile(data.numpy(), INTENSITY_PERCENTILE))
    if not scale > 0:
        raise BrainkernelsError(f"{name}: the scan is empty (its {INTENSITY_PERCENTILE}th percentile is {scale:g})")
    image = (data / scale).clamp(0, 1)
    foreground = foreground_mask(volume.with_data(image[None]), threshold="otsu")
    affine = volume.affine
    if grid.dims == 2:
        k = central_slice_index(volume.shape)
        image, foreground = image[:, :, k], foreground[:, :, k]
        affine = affine.copy()
        affine[:, 3] += affine[:, 2] * k  # the slice's origin: voxel (0, 0, k)
    return ModelInput(image.contiguous(), foreground.contiguous(), scale, affine)


def _millimetres(spacing) -> str:
    return " x ".join(f"{value:.3g}" for value in spacing) + " mm"


def preparation_request(scan: DHCPScan, grid: ModelGrid) -> Request:
    """The cache entry of :func:`prepare_input` for ``scan``: arrays ``image`` and ``head`` (the
    flat indices of its foreground voxels), values ``scale`` and ``affine``."""

    def build() -> tuple[dict[str, np.ndarray], dict]:
        prepared = prepare_input(load_nifti(scan.t2w_path), grid, str(scan.t2w_path))
        head = torch.nonzero(prepared.foreground.reshape(-1))[:, 0]
        return {"image": prepared.image.numpy(), "head": head.numpy()}, {"scale": prepared.scale,
                                                                         "affine": prepared.affine.tolist()}

    settings = {"grid": asdict(grid), "intensity_percentile": INTENSITY_PERCENTILE}
    return Request("inr-model-input", [scan.t2w_path], settings, build)


def cached_input(entry: Entry) -> ModelInput:
    """The model input of a cache entry, its image mapped (read when used)."""
    image = entry.tensor("image")
    foreground = torch.zeros(image.numel(), dtype=torch.bool)
    foreground[entry.tensor("head")] = True
    return ModelInput(image, foreground.reshape(image.shape), entry.values["scale"], np.array(entry.values["affine"]))


def voxel_coordinates(indices: Tensor, shape: tuple[int, ...], mirrored: bool = False) -> Tensor:
    """``grid_coordinates(shape)[indices]`` (float32) without making the whole grid's coordinates;
    ``mirrored``: of the voxels mirrored along the first axis (left-right)."""
    divisor = max(shape)
    axes = list(torch.unravel_index(indices, shape))
    if mirrored:
        axes[0] = shape[0] - 1 - axes[0]
    return torch.stack([(axis.float() - size / 2) / divisor for axis, size in zip(axes, shape, strict=True)], dim=1)


class SampledVoxels(Dataset):
    """Training items: per cached scan, ``ceil(pixel_ratio * voxels)`` voxels with their
    coordinates, ``foreground_share`` of them drawn from the head, the rest anywhere, and the
    scan's normalised age and latent index (its subject's with SSL, its own without). With
    ``mirrored_index`` (flip augmentation, as the paper's code), half of the items show the scan
    mirrored left-right, a baby of its own with the latent ``mirrored_index[index]``. Voxels and
    flips come from torch's generator.

    Item: ``coords`` (M, dims), ``targets`` (M,), ``age`` scalar, ``latent_index`` int64.
    """

    def __init__(self, entries: list[Entry], scans: list[DHCPScan], grid: ModelGrid, latent_index: list[int],
                 pixel_ratio: float, foreground_share: float, mirrored_index: list[int] | None = None) -> None:
        self.entries, self.scans, self.grid, self.latent_index = entries, scans, grid, latent_index
        self.mirrored_index = mirrored_index
        self.voxels = math.prod(grid.model_shape)
        self.samples = max(1, math.ceil(pixel_ratio * self.voxels))
        self.foreground_samples = round(foreground_share * self.samples)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        head = entry.tensor("head")
        chosen = torch.cat([head[torch.randint(len(head), (self.foreground_samples,))],
                            torch.randint(self.voxels, (self.samples - self.foreground_samples,))])
        mirrored = self.mirrored_index is not None and bool(torch.rand(()) < 0.5)
        return {
            "coords": voxel_coordinates(chosen, self.grid.model_shape, mirrored),
            "targets": entry.tensor("image").reshape(-1)[chosen],
            "age": torch.tensor(self.scans[index].normalised_age, dtype=torch.float32),
            "latent_index": torch.tensor((self.mirrored_index if mirrored else self.latent_index)[index]),
        }
