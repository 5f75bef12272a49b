"""Preprocessing: plain ``Volume -> Volume`` steps that keep the affine correct, so every output
overlays its input in a viewer, and named pipelines that chain them as the papers did.

What the papers did (thesis ch. 6-8):

- PPR (CQ500 head CT): resample to 1 mm voxels and 256^3, rigidly register every scan to one
  reference scan ("co-registered"), then histogram equalisation "since CT images have a high
  dynamic range"; foreground is separated from background so that patches made only of
  background are discarded. Registration is in :mod:`brainkernels.data.registration`;
  :func:`check_coregistration` here flags scans that are not on the cohort's common grid.
- PatchDDM (BraTS2020): 240x240x155 at 1 mm padded to 256^3; background voxels set to zero and
  the range between the 1st and 99th percentile normalised to [0, 1].
- INR (dHCP T2): images map into [0, 1]; the paper's own preprocessing is in a supplement the
  thesis does not reproduce, so the ``mr`` preset (the BraTS normalisation) is used for it too.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from numbers import Real

import numpy as np
import scipy.ndimage
import skimage.filters
import torch
from torch import Tensor

from brainkernels.data.volume import Volume, check_voxel_count

Step = Callable[[Volume], Volume]

#: The 12-bit range CT scanners store: air at -1024 HU up to dense bone and metal.
CT_HU_RANGE = (-1024.0, 3071.0)
#: Halfway between air (-1000 HU) and fat (about -100 HU): what lies below is air or padding.
CT_BACKGROUND_HU = -500.0
PRESETS = ("ct", "mr", "label")


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------


def _require_volume(volume: object, argument: str = "volume") -> Volume:
    if not isinstance(volume, Volume):
        raise TypeError(f"{argument} must be a brainkernels Volume; got {type(volume).__name__}")
    return volume


def _is_real(value: object) -> bool:
    # bool is an int to Python, but True as a spacing or a pad value is a caller's mistake
    return isinstance(value, Real) and not isinstance(value, bool)


def _finite_real(value: object, argument: str) -> float:
    if not _is_real(value) or not math.isfinite(value):
        raise ValueError(f"{argument} must be a finite number; got {value!r}")
    return float(value)


def _per_axis(value: object, argument: str) -> tuple[object, object, object]:
    """A number for all three axes or one per axis (D, H, W)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Real, Sequence, np.ndarray)):
        raise TypeError(f"{argument} must be a number or a sequence of 3 numbers; got {value!r}")
    if isinstance(value, Real):
        return (value, value, value)
    if len(value) != 3:
        raise ValueError(f"{argument} must have 3 entries (D, H, W); got {len(value)}: {value!r}")
    return tuple(value)


def _spacing_triple(spacing: object, argument: str = "spacing") -> np.ndarray:
    triple = [_finite_real(value, argument) for value in _per_axis(spacing, argument)]
    if min(triple) <= 0:
        raise ValueError(f"{argument} must be positive millimetres; got {spacing!r}")
    return np.array(triple)


def _shape_triple(shape: object, argument: str = "shape") -> tuple[int, int, int]:
    triple = _per_axis(shape, argument)
    if not all(isinstance(size, (int, np.integer)) and not isinstance(size, bool) for size in triple):
        raise TypeError(f"{argument} must be whole numbers of voxels; got {shape!r}")
    if min(triple) < 1:
        raise ValueError(f"{argument} must be at least 1 voxel per axis; got {shape!r}")
    check_voxel_count(triple, argument)
    return tuple(int(size) for size in triple)


def _value_range(value: object, argument: str) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)) or len(value) != 2:
        raise TypeError(f"{argument} must be a pair (low, high); got {value!r}")
    low, high = (_finite_real(bound, argument) for bound in value)
    if low >= high:
        raise ValueError(f"{argument} must be increasing (low < high); got {value!r}")
    return low, high


def _spatial_mask(mask: object, volume: Volume, argument: str = "mask") -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{argument} must be a (D, H, W) tensor; got {type(mask).__name__}")
    if tuple(mask.shape) != volume.shape:
        raise ValueError(f"{argument} must have the volume's shape {volume.shape}; got {tuple(mask.shape)}")
    return mask.to(device=volume.data.device, dtype=torch.bool)


def _name(volume: Volume) -> str:
    return str(volume.path) if volume.path is not None else "volume"


# --------------------------------------------------------------------------------------------
# geometry: resample, pad_or_crop
# --------------------------------------------------------------------------------------------


def _index_transform(scale: Sequence[float], offset: Sequence[float]) -> np.ndarray:
    """4x4 map from an output voxel index to the input voxel index: ``index * scale + offset``."""
    transform = np.eye(4)
    transform[:3, :3] = np.diag(scale)
    transform[:3, 3] = offset
    return transform


def _source_positions(ratio: float, size: int) -> Tensor:
    """Input voxel coordinates of the centres of ``size`` output voxels ``ratio`` times as large,
    with the outer corner of voxel 0 kept in place."""
    return (torch.arange(size, dtype=torch.float64) + 0.5) * ratio - 0.5


def _resample_axis(data: Tensor, dim: int, positions: Tensor, *, nearest: bool) -> Tensor:
    """Sample ``data`` along ``dim`` at fractional input ``positions``, holding the edge values
    beyond the first and last voxel centres."""
    last = data.shape[dim] - 1
    positions = positions.clamp(0, last)
    if nearest:
        index = torch.floor(positions + 0.5).long().clamp(max=last).to(data.device)
        return data.index_select(dim, index)
    lower = torch.floor(positions).long()
    upper = (lower + 1).clamp(max=last)
    weight_shape = [1] * data.dim()
    weight_shape[dim] = -1
    weight = (positions - lower).to(device=data.device, dtype=data.dtype).view(weight_shape)
    below = data.index_select(dim, lower.to(data.device))
    above = data.index_select(dim, upper.to(data.device))
    return torch.lerp(below, above, weight)


def resample(volume: Volume, spacing: float | Sequence[float] = (1.0, 1.0, 1.0), *, labels: bool = False) -> Volume:
    """Resample to voxels of ``spacing`` millimetres (one number, or one per axis D, H, W).

    Images are interpolated trilinearly, label maps (``labels=True``) take the nearest voxel's
    value, so no new labels appear. All channels are resampled alike.

    Geometry convention: the outer corner of voxel (0, 0, 0) keeps its world position and voxels
    are cells centred in their footprint (PyTorch's ``align_corners=False``). An axis of ``n``
    voxels of size ``s`` becomes ``round(n * s / spacing)`` voxels, so the field of view is kept
    exactly when the sizes divide evenly and otherwise changes by less than one voxel at the far
    end; samples beyond the outermost input voxel centres repeat the edge value. The affine is
    updated so every world point keeps its anatomy. Downsampling takes point samples without a
    low-pass filter first, like scipy's and nibabel's resampling.

    Trilinear interpolation is separable, so it is done as 1D linear interpolation along each
    axis in turn with sample positions computed here: that fixes the convention above exactly
    (``interpolate``'s own size and scale rules round differently), works on any device and
    needs no float64 copy or sampling grid of the volume.
    """
    _require_volume(volume)
    target = _spacing_triple(spacing)
    if not isinstance(labels, bool):
        raise TypeError(f"labels must be True or False; got {labels!r}")
    current = np.array(volume.spacing)
    if min(current) <= 0:
        raise ValueError(f"{_name(volume)}: volume.affine has a zero-length voxel axis: {current}")
    ratios = target / current
    new_sizes = [max(1, round(size / ratio)) for size, ratio in zip(volume.shape, ratios)]
    check_voxel_count(tuple(new_sizes), f"{_name(volume)}: resampled to {spacing!r} mm it would have")
    data = volume.data
    for axis, (new_size, ratio) in enumerate(zip(new_sizes, ratios)):
        data = _resample_axis(data, axis + 1, _source_positions(ratio, new_size), nearest=labels)
    affine = volume.affine @ _index_transform(ratios, 0.5 * ratios - 0.5)
    return volume.with_data(data.contiguous(), affine)


def _centred_start(size: int, target: int) -> int:
    """Input index of output voxel 0 when ``size`` voxels are centred in ``target``; negative
    when padding. An odd difference puts the extra voxel at the far end, for padding and
    cropping alike, so cropping undoes padding exactly."""
    return (size - target) // 2 if size >= target else -((target - size) // 2)


def _overlap(start: int, size: int, target: int) -> tuple[slice, slice]:
    """The input and output slices of the voxels that an axis keeps."""
    kept = min(size, target)
    return slice(max(start, 0), max(start, 0) + kept), slice(max(-start, 0), max(-start, 0) + kept)


def pad_or_crop(volume: Volume, shape: int | Sequence[int] = (256, 256, 256), *, value: float | None = None) -> Volume:
    """Centre the volume in a grid of ``shape`` voxels, padding or cropping each axis.

    Padding uses ``value``, by default each channel's minimum (its background). The affine is
    translated so every kept voxel keeps its world position.
    """
    _require_volume(volume)
    target = _shape_triple(shape)
    data = volume.data
    if value is None:
        fill = data.amin(dim=(1, 2, 3))
    else:
        fill = torch.full((volume.channels,), _finite_real(value, "value"), dtype=data.dtype, device=data.device)
    starts = [_centred_start(size, wanted) for size, wanted in zip(volume.shape, target)]
    source, destination = zip(*(_overlap(*axis) for axis in zip(starts, volume.shape, target)))
    output = fill.view(-1, 1, 1, 1).expand(volume.channels, *target).clone()
    output[(slice(None), *destination)] = data[(slice(None), *source)]
    return volume.with_data(output, volume.affine @ _index_transform((1, 1, 1), starts))


# --------------------------------------------------------------------------------------------
# intensities: normalize_mr, equalize_ct
# --------------------------------------------------------------------------------------------


def _rescale_clipped(values: Tensor, low: float, high: float) -> Tensor:
    # a constant channel (low == high) maps to 0 rather than dividing by zero
    width = max(high - low, torch.finfo(torch.float32).tiny)
    return ((values - low) / width).clamp(0, 1)


def normalize_mr(
    volume: Volume, *, percentiles: tuple[float, float] = (1.0, 99.0), mask: Tensor | None = None
) -> Volume:
    """PatchDDM's MR normalisation: per channel, the ``percentiles`` of the foreground map to 0
    and 1 (values beyond are clipped) and the background is set to 0.

    The foreground is ``mask`` (a (D, H, W) tensor, nonzero = foreground) or, by default, the
    voxels where any channel is above 0: skull-stripped data such as BraTS leave the background
    at exactly 0. Data with another background (dHCP T2 before masking, raw MR with noise) need
    a mask, e.g. dHCP's ``desc-brain_mask`` or ``foreground_mask(volume, threshold="otsu")``.
    """
    _require_volume(volume)
    low_percentile, high_percentile = _value_range(percentiles, "percentiles")
    if low_percentile < 0 or high_percentile > 100:
        raise ValueError(f"percentiles must lie in [0, 100]; got {percentiles!r}")
    foreground = (volume.data > 0).any(dim=0) if mask is None else _spatial_mask(mask, volume)
    if not foreground.any():
        raise ValueError(f"{_name(volume)}: the foreground (mask) is empty; nothing to normalise")
    output = torch.zeros_like(volume.data)
    for channel, image in enumerate(volume.data):
        values = image[foreground]
        # torch.quantile refuses inputs over 2^24 elements, which a 256^3 foreground can reach
        low, high = np.percentile(values.cpu().numpy(), [low_percentile, high_percentile])
        output[channel][foreground] = _rescale_clipped(values, float(low), float(high))
    return volume.with_data(output)


def _hu_bins(image: Tensor, hu_range: tuple[float, float], bins: int) -> Tensor:
    low, high = hu_range
    return ((image.double() - low) * (bins / (high - low))).floor().clamp(0, bins - 1).long()


def equalize_ct(
    volume: Volume,
    *,
    hu_range: tuple[float, float] = CT_HU_RANGE,
    bins: int = 4096,
    background_hu: float | None = CT_BACKGROUND_HU,
) -> Volume:
    """PPR's histogram equalisation of CT to [0, 1], per channel.

    Values are clipped to ``hu_range`` (default: the stored 12-bit range, -1024 to 3071 HU; the
    paper names no window) and binned into ``bins`` equal bins (default 4096: one per integer HU,
    so integer CT data are equalised exactly). Air and padding at or below ``background_hu``
    become 0; every other voxel becomes the fraction of those foreground voxels in its bin or a
    lower one. The mapping is monotonic, the most attenuating voxel maps to 1, and the
    foreground's output histogram is as flat as its bins allow.

    The histogram is taken over the foreground because a head CT is mostly air: equalising that
    too spends half of [0, 1] on air and leaves the background above 0.
    ``background_hu=None`` does exactly that (the textbook equalisation of every voxel).

    Done in torch with ``bincount`` rather than ``skimage.exposure.equalize_hist``, which
    interpolates its CDF between bin centres (so the range ends are not pinned to 0 and 1 and
    one HU value is not one output value) and cannot hold the background at 0.
    """
    _require_volume(volume)
    hu_range = _value_range(hu_range, "hu_range")
    if not isinstance(bins, (int, np.integer)) or isinstance(bins, bool):
        raise TypeError(f"bins must be an integer; got {bins!r}")
    if bins < 2:
        raise ValueError(f"bins must be at least 2; got {bins}")
    if background_hu is not None:
        background_hu = _finite_real(background_hu, "background_hu")
        if not hu_range[0] <= background_hu < hu_range[1]:
            raise ValueError(f"background_hu must lie in hu_range {hu_range}; got {background_hu}")
    output = torch.zeros_like(volume.data)
    for channel, image in enumerate(volume.data):
        foreground = torch.ones_like(image, dtype=torch.bool) if background_hu is None else image > background_hu
        if not foreground.any():
            continue
        bin_of_voxel = _hu_bins(image, hu_range, int(bins))
        counts = torch.bincount(bin_of_voxel[foreground], minlength=int(bins))
        cumulative = counts.cumsum(0).double() / counts.sum()
        equalised = cumulative[bin_of_voxel].to(output.dtype)
        output[channel] = torch.where(foreground, equalised, 0)
    return volume.with_data(output)


# --------------------------------------------------------------------------------------------
# foreground and co-registration
# --------------------------------------------------------------------------------------------


def _channel_thresholds(data: Tensor, threshold: float | str | None) -> list[float]:
    if threshold is None:
        return [float(image.min()) for image in data]
    if threshold == "otsu":
        # ravel: skimage guesses that a volume with a last axis of 3 or 4 is an RGB image
        return [float(skimage.filters.threshold_otsu(image.cpu().numpy().ravel())) for image in data]
    if isinstance(threshold, str):
        raise ValueError(f"threshold must be None, 'otsu' or a number; got {threshold!r}")
    return [_finite_real(threshold, "threshold")] * data.shape[0]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labelled, count = scipy.ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0  # label 0 is the background
    return labelled == sizes.argmax()


def foreground_mask(volume: Volume, *, threshold: float | str | None = None) -> Tensor:
    """The subject as a (D, H, W) bool tensor: voxels where any channel is above its threshold,
    reduced to the largest connected component with its enclosed cavities (ventricles,
    sinuses) filled. Used to sample patches and to discard patches of background only.

    ``threshold``: ``None`` (default) is each channel's minimum, the background left by
    ``normalize_mr``, ``equalize_ct``, skull stripping or padding, so preprocessed MR is
    "any channel > 0"; ``"otsu"`` is each channel's Otsu threshold, for raw scans whose
    background is noisy (CT air, unmasked MR); a number applies to every channel.
    """
    _require_volume(volume)
    thresholds = _channel_thresholds(volume.data, threshold)
    above = torch.zeros(volume.shape, dtype=torch.bool, device=volume.data.device)
    for image, level in zip(volume.data, thresholds):
        above |= image > level
    head = scipy.ndimage.binary_fill_holes(_largest_component(above.cpu().numpy()))
    return torch.from_numpy(head).to(volume.data.device)


class CoregistrationWarning(UserWarning):
    """A scan looks off the cohort's common grid or far from the other scans' anatomy."""


@dataclass(frozen=True, eq=False)  # compared by identity: fields holding arrays have no single truth value
class Footprint:
    """Where a scan's foreground lies: its grid and the foreground's centroid and bounding-box
    size in world millimetres (NaN when the foreground is empty). Small enough to keep one per
    scan of a whole cohort while the volumes themselves are processed one at a time."""

    name: str
    shape: tuple[int, int, int]
    affine: np.ndarray
    centroid_mm: np.ndarray
    extent_mm: np.ndarray


def _to_world(affine: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return indices @ affine[:3, :3].T + affine[:3, 3]


def foreground_footprint(volume: Volume, mask: Tensor | None = None, *, name: str | None = None) -> Footprint:
    """The :class:`Footprint` of ``mask`` (default: ``foreground_mask(volume)``)."""
    _require_volume(volume)
    mask = foreground_mask(volume) if mask is None else _spatial_mask(mask, volume)
    mask = mask.cpu().numpy()
    name = _name(volume) if name is None else str(name)
    if not mask.any():
        nothing = np.full(3, np.nan)
        return Footprint(name, volume.shape, volume.affine, nothing, nothing)
    # marginal counts per axis give centroid and bounding box without listing every voxel
    profiles = [mask.sum(axis=tuple(other for other in range(3) if other != axis)) for axis in range(3)]
    centroid = np.array([np.average(np.arange(len(profile)), weights=profile) for profile in profiles])
    occupied = [np.flatnonzero(profile) for profile in profiles]
    # bounding box out to the voxels' outer faces, so one voxel has the extent of one voxel
    low = np.array([indices[0] for indices in occupied]) - 0.5
    high = np.array([indices[-1] for indices in occupied]) + 0.5
    corners = np.array(list(itertools.product(*zip(low, high))))
    world_corners = _to_world(volume.affine, corners)
    extent = world_corners.max(axis=0) - world_corners.min(axis=0)
    return Footprint(name, volume.shape, volume.affine, _to_world(volume.affine, centroid), extent)


def _footprint_of(item: object, position: int) -> Footprint:
    if isinstance(item, Footprint):
        return item
    if isinstance(item, Volume):
        return foreground_footprint(item, name=None if item.path is not None else f"volume {position}")
    raise TypeError(f"volumes[{position}] must be a Volume or a Footprint; got {type(item).__name__}")


def _same_grid(first: Footprint, second: Footprint) -> bool:
    return first.shape == second.shape and np.allclose(first.affine, second.affine, atol=1e-3)


def _grid_problems(footprints: list[Footprint]) -> list[tuple[str, str]]:
    common = max(footprints, key=lambda candidate: sum(_same_grid(candidate, other) for other in footprints))
    return [
        (footprint.name, f"its grid (shape {footprint.shape} and affine) differs from the common grid of {common.name}")
        for footprint in footprints
        if not _same_grid(footprint, common)
    ]


def _anatomy_problems(footprints: list[Footprint], tolerance_mm: float) -> list[tuple[str, str]]:
    empty = [footprint for footprint in footprints if np.isnan(footprint.centroid_mm).any()]
    problems = [(footprint.name, "its foreground is empty") for footprint in empty]
    measured = [footprint for footprint in footprints if footprint not in empty]
    if not measured:
        return problems
    median_centroid = np.median([footprint.centroid_mm for footprint in measured], axis=0)
    median_extent = np.median([footprint.extent_mm for footprint in measured], axis=0)
    for footprint in measured:
        shift = float(np.linalg.norm(footprint.centroid_mm - median_centroid))
        if shift > tolerance_mm:
            problems.append((footprint.name, f"its foreground centroid is {shift:.1f} mm from the cohort median"))
        size_difference = float(np.abs(footprint.extent_mm - median_extent).max())
        if size_difference > tolerance_mm:
            problems.append((
                footprint.name,
                f"its foreground extent {np.round(footprint.extent_mm, 1).tolist()} mm differs from the cohort "
                f"median {np.round(median_extent, 1).tolist()} mm by {size_difference:.1f} mm",
            ))
    return problems


def check_coregistration(volumes: Iterable[Volume | Footprint], *, tolerance_mm: float = 20.0) -> list[str]:
    """Cheap check that a cohort is co-registered; warns (:class:`CoregistrationWarning`, naming
    the file) and returns the names of the scans that look off.

    PPR regresses where a patch lies in the voxel grid, so its inputs must be co-registered to
    one common grid (the paper registers every scan rigidly to a reference scan) before
    training or inference. This function does not register; it only flags scans

    - whose grid (shape and affine) differs from the cohort's most common one,
    - whose foreground centroid lies more than ``tolerance_mm`` from the cohort median, or whose
      foreground bounding box differs from the median by more than ``tolerance_mm`` along an
      axis (world millimetres), or
    - whose foreground is empty.

    ``volumes``: preprocessed volumes (the foreground is ``foreground_mask(volume)``; a binary
    mask as a Volume works too) or :class:`Footprint` objects from :func:`foreground_footprint`,
    which let a command check a cohort without holding every volume in memory. Fewer than two
    scans cannot be compared: nothing is flagged.
    """
    tolerance_mm = _finite_real(tolerance_mm, "tolerance_mm")
    if tolerance_mm <= 0:
        raise ValueError(f"tolerance_mm must be positive; got {tolerance_mm}")
    footprints = [_footprint_of(item, position) for position, item in enumerate(volumes)]
    if len(footprints) < 2:
        return []
    reasons: dict[str, list[str]] = {}
    for name, reason in _grid_problems(footprints) + _anatomy_problems(footprints, tolerance_mm):
        reasons.setdefault(name, []).append(reason)
    for name, found in reasons.items():
        message = f"{name}: may not be co-registered with the cohort: {'; '.join(found)}"
        warnings.warn(message, CoregistrationWarning, stacklevel=2)
    return list(reasons)


# --------------------------------------------------------------------------------------------
# pipelines
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pipeline:
    """Named steps applied in order: ``Pipeline((("resample", resample), ("pad", pad_fn)))(volume)``."""

    steps: tuple[tuple[str, Step], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.steps, Iterable):
            raise TypeError(f"steps must be a sequence of (name, function) pairs; got {self.steps!r}")
        steps = tuple(self.steps)
        for position, step in enumerate(steps):
            if not (isinstance(step, tuple) and len(step) == 2 and isinstance(step[0], str) and step[0]):
                raise TypeError(f"steps[{position}] must be a (name, function) pair, the name not empty; got {step!r}")
            if not callable(step[1]):
                raise TypeError(f"steps[{position}] ({step[0]!r}): {step[1]!r} is not callable")
        names = [name for name, _ in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"steps must have distinct names; got {names}")
        object.__setattr__(self, "steps", steps)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.steps)

    def __call__(self, volume: Volume) -> Volume:
        _require_volume(volume)
        for name, step in self.steps:
            volume = step(volume)
            if not isinstance(volume, Volume):
                raise TypeError(f"pipeline step {name!r} returned {type(volume).__name__}, not a Volume")
        return volume


def preset_pipeline(name: str, *, spacing: float | Sequence[float] = 1.0, shape: int | Sequence[int] = 256) -> Pipeline:
    """The papers' preprocessing at ``spacing`` mm and ``shape`` voxels (defaults 1 mm, 256^3):

    - ``ct``: resample (trilinear), pad/crop (with the minimum, i.e. air), ``equalize_ct`` (PPR);
    - ``mr``: resample (trilinear), pad/crop (with the minimum), ``normalize_mr`` (PatchDDM, INR);
    - ``label``: resample (nearest), pad/crop with 0 (label maps and masks).
    """
    if name not in PRESETS:
        raise ValueError(f"pipeline must be one of {', '.join(PRESETS)}; got {name!r}")
    spacing, shape = _spacing_triple(spacing), _shape_triple(shape)
    geometry = (
        ("resample", partial(resample, spacing=tuple(spacing.tolist()), labels=name == "label")),
        ("pad_or_crop", partial(pad_or_crop, shape=shape, value=0.0 if name == "label" else None)),
    )
    intensity = {"ct": (("equalize_ct", equalize_ct),), "mr": (("normalize_mr", normalize_mr),), "label": ()}
    return Pipeline(geometry + intensity[name])
