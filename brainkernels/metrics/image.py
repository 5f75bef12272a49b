"""Image similarity (PSNR, SSIM, MAE, by scikit-image and numpy) and the head circumference of
a head mask, for predicted scans against the true ones."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _pair(predicted, target) -> tuple[np.ndarray, np.ndarray]:
    predicted, target = np.asarray(predicted, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if predicted.shape != target.shape:
        raise ValueError(f"predicted shape {predicted.shape} differs from target shape {target.shape}")
    return predicted, target


def psnr(predicted, target, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, data_range]."""
    predicted, target = _pair(predicted, target)
    return float(peak_signal_noise_ratio(target, predicted, data_range=data_range))


def ssim(predicted, target, data_range: float = 1.0) -> float:
    """Mean structural similarity (scikit-image's defaults: 7-voxel window, 2D or 3D)."""
    predicted, target = _pair(predicted, target)
    return float(structural_similarity(target, predicted, data_range=data_range))


def mae(predicted, target) -> float:
    predicted, target = _pair(predicted, target)
    return float(np.mean(np.abs(predicted - target)))


def head_circumference_cm(head: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Occipitofrontal circumference (cm) of a head mask (X, Y, Z) in RAS order, measured as a
    tape would: around the widest axial section, the perimeter (Ramanujan) of the ellipse whose
    axes are that section's left-right and front-back extents. A 2D mask is one axial section."""
    head = np.asarray(head, dtype=bool)
    if head.ndim == 2:
        head = head[..., None]
    if head.ndim != 3 or not head.any():
        raise ValueError(f"head must be a non-empty 2D or 3D mask; got shape {head.shape} with {int(head.sum())} "
                         "voxels set")
    section = head[:, :, int(np.argmax(head.sum(axis=(0, 1))))]
    width = (np.ptp(np.flatnonzero(section.any(axis=1))) + 1) * spacing_mm[0]
    length = (np.ptp(np.flatnonzero(section.any(axis=0))) + 1) * spacing_mm[1]
    a, b = width / 2, length / 2
    return float(np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b)))) / 10
