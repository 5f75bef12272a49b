"""Rigid (6 degrees of freedom) or affine registration of scans to one reference scan with
SimpleITK, as PPR needs its scans co-registered (the paper registered every CQ500 scan rigidly
to a reference from the training set).

Mattes mutual information over a three-level pyramid (8, 4 and 2 mm, never finer than the
reference's voxels), started from the images' centres of mass; MI serves CT to CT and MR to MR
alike and needs no intensity scaling. A registration that ends far from the reference cannot be
told from a good one by the optimiser's own metric, whose scale varies with the images, so each
result is scored by normalised mutual information with the reference over the reference's head,
on 4 mm blocks (so that noise and resolution do not move the score), a number from 1
(independent) to 2 (identical), and flagged as failed below a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import skimage.filters
import skimage.metrics
import skimage.transform
import torch

from brainkernels.data.volume import Volume

TRANSFORMS = ("rigid", "affine")
PYRAMID_MM = (8.0, 4.0, 2.0)
SAMPLES_PER_LEVEL = 50_000
"""Random voxels the metric is measured on per iteration: enough for sub-millimetre accuracy,
and a 512x512x300 CT costs no more per iteration than a 64^3 one."""
MIN_SIMILARITY = 1.075
"""Normalised mutual information below which a registration is flagged as failed. Synthetic
heads registered to another subject scored 1.10-1.16 at 64^3 and 1.17-1.32 from 512x512x256
DICOM series; an unrelated image 1.01 (tests/test_registration.py). A registration left 30
degrees off scored 1.05-1.06 at 64^3 but 1.11-1.13 at full size: the threshold catches gross
failures, the QC figures the rest."""
SIMILARITY_MM = 4.0
SEED = 0
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Registration:
    """``volume``: the moving scan resampled onto the reference's grid; ``transform`` maps a
    point of the reference (LPS millimetres, as ITK) to the moving scan; ``metric``: the
    optimiser's final Mattes mutual information (lower is better); ``similarity``: the
    normalised mutual information over the reference's head; ``failed``: below ``MIN_SIMILARITY``."""

    volume: Volume
    transform: sitk.Transform
    metric: float
    similarity: float
    failed: bool


def to_sitk(volume: Volume) -> sitk.Image:
    """The first channel of ``volume`` as a SimpleITK image with the same world geometry (ITK's
    physical space is LPS)."""
    spacing = np.array(volume.spacing)
    rotation = volume.affine[:3, :3] / spacing
    if np.abs(rotation.T @ rotation - np.eye(3)).max() > 1e-4:
        raise ValueError(f"{volume.path or 'volume'}: its affine is sheared; resample it onto an orthogonal grid first")
    image = sitk.GetImageFromArray(volume.data[0].numpy().transpose(2, 1, 0).astype(np.float32))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((_RAS_TO_LPS @ rotation).flatten().tolist())
    image.SetOrigin((_RAS_TO_LPS @ volume.affine[:3, 3]).tolist())
    return image


def _array(image: sitk.Image) -> np.ndarray:
    """(D, H, W) voxels of an image made by :func:`to_sitk` or resampled onto one."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def register(moving: Volume, reference: Volume, *, transform: str = "rigid",
             min_similarity: float = MIN_SIMILARITY) -> Registration:
    """Register ``moving`` to ``reference`` (first channels) and resample it onto the reference grid
    (trilinear; outside the moving scan, its minimum, i.e. air)."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}; got {transform!r}")
    fixed, moving_image = to_sitk(reference), to_sitk(moving)
    found = _rigid_start(fixed, moving_image)
    metric = _optimise(fixed, moving_image, found)
    if transform == "affine":
        found = sitk.AffineTransform(found.GetMatrix(), found.GetTranslation(), found.GetCenter())
        metric = _optimise(fixed, moving_image, found)
    air = float(moving.data[0].min())
    registered = _array(sitk.Resample(moving_image, fixed, found, sitk.sitkLinear, air))
    reference_array = reference.data[0].numpy()
    similarity = head_similarity(reference_array, registered, reference.spacing)
    volume = Volume(torch.from_numpy(np.ascontiguousarray(registered))[None], reference.affine, moving.path)
    return Registration(volume, found, metric, similarity, similarity < min_similarity)


def head_similarity(reference: np.ndarray, image: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Normalised mutual information of two arrays on one grid of voxels ``spacing`` mm, averaged
    in blocks of about ``SIMILARITY_MM``, over the reference's foreground (above its Otsu
    threshold): the background, mostly air, would make any two heads look alike."""
    blocks = tuple(max(1, round(SIMILARITY_MM / size)) for size in spacing)
    reference = skimage.transform.downscale_local_mean(reference, blocks)
    image = skimage.transform.downscale_local_mean(image, blocks)
    head = reference > skimage.filters.threshold_otsu(reference)
    return float(skimage.metrics.normalized_mutual_information(reference[head], image[head], bins=64))


def _rigid_start(fixed: sitk.Image, moving: sitk.Image) -> sitk.Euler3DTransform:
    """The rotation about, and translation between, the centres of mass of the two heads
    (intensities rescaled to [0, 1] first: CT air is -1000 HU, a negative mass)."""
    return sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
        sitk.RescaleIntensity(fixed, 0, 1), sitk.RescaleIntensity(moving, 0, 1), sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    ))  # fmt: skip


def _optimise(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Refine ``transform`` in place over the pyramid; returns the final metric value."""
    finest = min(fixed.GetSpacing())
    levels_mm = sorted({max(level, finest) for level in PYRAMID_MM}, reverse=True)
    shrink = [max(1, int(level // finest)) for level in levels_mm]
    voxels = np.prod(fixed.GetSize())
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(
        [min(1.0, SAMPLES_PER_LEVEL * factor**3 / voxels) for factor in shrink], SEED
    )
    # Gradients at the sampled points only: precomputing them for every voxel of a 512x512x300 CT
    # took 3x the time and 1.2 GB more.
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetInterpolator(sitk.sitkLinear)
    # Shrinking the step by 0.8 at each turn, not 0.5: halving stopped 0.2-5 mm short of the
    # optimum on the test heads, varying between runs; 0.8 ended within 0.03 mm every time.
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=0.01, numberOfIterations=200, relaxationFactor=0.8, gradientMagnitudeTolerance=1e-6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel([level / 4 for level in levels_mm])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    return float(method.GetMetricValue())


def qc_figure(registration: Registration, reference: Volume, title: str):
    """The registered scan with the reference's edges drawn over it (the outlines of its
    three-class Otsu regions: for CT the head and the bone), three orthogonal slices through
    the middle of the reference's head."""
    from brainkernels.data.preprocess import resample
    from brainkernels.figures import figure_point, orthogonal_slices

    # Slices show voxels as squares: resample anisotropic grids (thin-slice CT) to cubes first.
    display_mm = max(reference.spacing)
    reference_array = resample(reference, display_mm).data[0].numpy()
    classes = np.digitize(reference_array, skimage.filters.threshold_multiotsu(reference_array, classes=3))
    verdict = "FAILED" if registration.failed else "ok"
    return orthogonal_slices(
        resample(registration.volume, display_mm).data[0], point=figure_point(classes > 0),
        outlines={"reference head": classes > 0, "reference's brightest class (CT: bone)": classes > 1},
        title=f"{title}: {verdict}, similarity {registration.similarity:.3f}",
    )  # fmt: skip
