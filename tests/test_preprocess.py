"""Tests for brainkernels.data.preprocess and the ``preprocess`` command.

Expected values are analytic (ramps, known percentiles, hand-placed anatomy) rather than the
output of another resampler, so a wrong convention, a shifted affine or a lost channel fails.
"""

from __future__ import annotations

import argparse
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from brainkernels.data.preprocess import (
    CoregistrationWarning,
    Footprint,
    Pipeline,
    check_coregistration,
    equalize_ct,
    foreground_footprint,
    foreground_mask,
    normalize_mr,
    pad_or_crop,
    preset_pipeline,
    resample,
)
from brainkernels.data.preprocess_command import register_command
from brainkernels.data.volume import Volume, load_nifti, save_nifti

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def make_affine(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), rotation=None) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if rotation is None else rotation) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def oblique_rotation() -> np.ndarray:
    """A rotation about a tilted axis, so no voxel axis is aligned with a world axis."""
    angle = 0.4
    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def voxel_indices(shape) -> np.ndarray:
    """(N, 3) indices of every voxel, in C order (matching ``tensor.ravel()``)."""
    return np.stack(np.meshgrid(*[np.arange(size) for size in shape], indexing="ij"), axis=-1).reshape(-1, 3)


def to_world(affine, indices) -> np.ndarray:
    return indices @ affine[:3, :3].T + affine[:3, 3]


def to_index(affine, world) -> np.ndarray:
    return (world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T


def ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(size, dtype=float) for size in shape], indexing="ij"), axis=-1)
    return (((grid - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1) <= 1.0


def synthetic_head_ct(shape=(28, 30, 26), shift=(0, 0, 0), scale=1.0, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Head CT in HU and the true head mask: noisy air, skin and brain, a skull shell, a dark
    ventricle, an enclosed air sinus (inside the head, so part of it) and a detached table
    (outside it)."""
    rng = np.random.default_rng(seed)
    centre = np.array(shape) / 2 - 0.5 + np.array(shift)
    radii = np.array([10.0, 11.0, 9.0]) * scale
    head = ellipsoid(shape, centre, radii)
    image = np.full(shape, -1000.0) + rng.normal(0, 15, shape)
    image[head] = 40 + rng.normal(0, 5, int(head.sum()))
    image[head & ~ellipsoid(shape, centre, radii - 2)] = 1000.0
    image[ellipsoid(shape, centre + [0, 2, 0], [2.5, 2.0, 2.0])] = 8.0
    image[ellipsoid(shape, centre + [-4, -5, 0], [1.5, 1.5, 1.5])] = -1000.0
    table = np.zeros(shape, dtype=bool)
    table[:, 1:3, 3:-3] = True
    image[table & ~head] = 200.0
    return image.astype(np.float32), head


def volume_of(array, affine=None, path=None) -> Volume:
    data = torch.as_tensor(np.asarray(array, dtype=np.float32))
    if data.dim() == 3:
        data = data[None]
    return Volume(data, np.eye(4) if affine is None else affine, path)


def world_centroid(volume: Volume) -> np.ndarray:
    weights = volume.data[0].double().numpy().ravel()
    return to_world(volume.affine, voxel_indices(volume.shape).T.dot(weights) / weights.sum())


# --------------------------------------------------------------------------------------------
# resample
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [(1.0, 1.0, 1.0), (3.0, 2.5, 0.7), (1.3, 1.3, 1.3)])
def test_resampled_ramp_keeps_its_value_at_every_world_point(target):
    """A function linear in world coordinates must stay that function after trilinear
    resampling, wherever the new voxel centres lie inside the input's voxel centres."""
    affine = make_affine(spacing=(2.0, 1.5, 2.5), origin=(-30.0, 12.0, 4.0), rotation=oblique_rotation())
    shape = (9, 11, 7)
    gradient, offset = np.array([0.7, -1.3, 2.1]), 5.0
    values = to_world(affine, voxel_indices(shape)) @ gradient + offset
    volume = volume_of(values.reshape(shape), affine)

    resampled = resample(volume, target)

    assert np.allclose(resampled.spacing, target)
    world = to_world(resampled.affine, voxel_indices(resampled.shape))
    inside = ((to_index(affine, world) >= -1e-9) & (to_index(affine, world) <= np.array(shape) - 1 + 1e-9)).all(axis=1)
    assert inside.sum() > 100
    expected = world @ gradient + offset
    actual = resampled.data[0].numpy().ravel()
    np.testing.assert_allclose(actual[inside], expected[inside], atol=1e-3)


def test_halving_the_spacing_doubles_the_shape_and_keeps_the_corner():
    affine = make_affine(spacing=(2.0, 2.0, 2.0), origin=(10.0, -20.0, 5.0))
    volume = volume_of(np.random.default_rng(0).random((5, 6, 7)), affine)

    resampled = resample(volume, 1.0)

    assert resampled.shape == (10, 12, 14)
    corner = np.array([-0.5, -0.5, -0.5])
    np.testing.assert_allclose(to_world(resampled.affine, corner), to_world(affine, corner))
    # the centre of new voxel (0, 0, 0) sits a quarter of an old voxel inside the corner
    np.testing.assert_allclose(resampled.affine[:3, 3], [9.5, -20.5, 4.5])


def test_resampling_keeps_a_blob_at_the_same_world_position():
    affine = make_affine(spacing=(1.2, 0.9, 2.0), origin=(-7.0, 3.0, 11.0))
    shape = (30, 36, 18)
    world = to_world(affine, voxel_indices(shape))
    centre = to_world(affine, np.array([12.3, 20.7, 8.1]))
    blob = np.exp(-(((world - centre) / 4.0) ** 2).sum(axis=1)).reshape(shape)
    volume = volume_of(blob, affine)

    for target in [(1.0, 1.0, 1.0), (2.0, 1.5, 1.0), (0.8, 0.8, 0.8)]:
        np.testing.assert_allclose(world_centroid(resample(volume, target)), centre, atol=0.05)


def test_labels_keep_their_value_set_and_upsample_by_repetition():
    labels = np.random.default_rng(1).choice([0, 1, 2, 4], size=(6, 5, 7)).astype(np.float32)
    volume = volume_of(labels, make_affine(spacing=(2.0, 2.0, 2.0)))

    doubled = resample(volume, 1.0, labels=True)
    expected = torch.from_numpy(labels).repeat_interleave(2, 0).repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert torch.equal(doubled.data[0], expected)

    for target in [(3.0, 1.7, 0.9), (1.1, 2.9, 5.0)]:
        resampled = resample(volume, target, labels=True)
        assert set(resampled.data.unique().tolist()) <= {0.0, 1.0, 2.0, 4.0}


def test_trilinear_resampling_of_labels_would_make_new_values():
    """The contrast to the test above: without labels=True, boundaries are blended."""
    labels = np.zeros((6, 6, 6), dtype=np.float32)
    labels[3:] = 4.0
    resampled = resample(volume_of(labels, make_affine(spacing=(2.0, 2.0, 2.0))), 1.0)
    assert not set(resampled.data.unique().tolist()) <= {0.0, 4.0}


def test_channels_are_resampled_alike():
    rng = np.random.default_rng(2)
    channels = rng.random((3, 7, 8, 9)).astype(np.float32)
    affine = make_affine(spacing=(1.5, 1.0, 0.8))
    stacked = resample(Volume(torch.from_numpy(channels), affine), (1.0, 1.2, 1.0))
    for channel in range(3):
        alone = resample(volume_of(channels[channel], affine), (1.0, 1.2, 1.0))
        assert torch.equal(stacked.data[channel], alone.data[0])
        np.testing.assert_array_equal(stacked.affine, alone.affine)


def test_resampling_to_the_current_spacing_changes_nothing():
    volume = volume_of(np.random.default_rng(3).random((5, 6, 7)), make_affine(spacing=(1.5, 1.0, 2.0)))
    same = resample(volume, (1.5, 1.0, 2.0))
    torch.testing.assert_close(same.data, volume.data)
    np.testing.assert_allclose(same.affine, volume.affine)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(*[st.integers(1, 9)] * 3),
    spacing=st.tuples(*[st.floats(0.4, 3.0)] * 3),
    target=st.tuples(*[st.floats(0.4, 3.0)] * 3),
    labels=st.booleans(),
)
def test_resample_geometry_properties(shape, spacing, target, labels):
    volume = volume_of(np.random.default_rng(0).integers(0, 4, shape), make_affine(spacing, origin=(3.0, -2.0, 1.0)))
    resampled = resample(volume, target, labels=labels)
    assert resampled.shape == tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target))
    np.testing.assert_allclose(resampled.spacing, target, rtol=1e-9)
    corner = np.array([-0.5, -0.5, -0.5])
    np.testing.assert_allclose(to_world(resampled.affine, corner), to_world(volume.affine, corner), atol=1e-9)
    assert float(resampled.data.min()) >= 0 and float(resampled.data.max()) <= 3
    if labels:
        assert set(resampled.data.unique().tolist()) <= set(volume.data.unique().tolist())


# --------------------------------------------------------------------------------------------
# pad_or_crop
# --------------------------------------------------------------------------------------------


def test_pad_centres_the_data_with_the_extra_voxel_at_the_far_end():
    data = torch.arange(1, 3 * 4 * 5 + 1, dtype=torch.float32).reshape(1, 3, 4, 5)
    padded = pad_or_crop(Volume(data, np.eye(4)), (8, 4, 2), value=-1.0)
    assert padded.shape == (8, 4, 2)
    # D: 3 -> 8 pads 2 before, 3 after; W: 5 -> 2 crops 1 before, 2 after
    assert torch.equal(padded.data[0, 2:5, :, :], data[0, :, :, 1:3])
    assert (padded.data[0, :2] == -1).all() and (padded.data[0, 5:] == -1).all()


def test_pad_or_crop_keeps_the_world_position_of_every_kept_voxel():
    affine = make_affine(spacing=(1.5, 0.8, 2.0), origin=(4.0, -9.0, 2.0), rotation=oblique_rotation())
    volume = volume_of(np.random.default_rng(4).random((7, 10, 4)), affine)
    result = pad_or_crop(volume, (10, 6, 9), value=-5.0)
    for index in voxel_indices(result.shape):
        source = np.round(to_index(affine, to_world(result.affine, index))).astype(int)
        value = result.data[(0, *index)].item()
        if ((source >= 0) & (source < volume.shape)).all():
            assert value == volume.data[(0, *source)].item()
        else:
            assert value == -5.0


def test_pad_value_defaults_to_each_channels_minimum():
    data = torch.stack([torch.full((2, 2, 2), 3.0), torch.full((2, 2, 2), -7.0)])
    data[0, 0, 0, 0], data[1, 1, 1, 1] = 1.0, -9.0
    padded = pad_or_crop(Volume(data, np.eye(4)), 4)
    assert padded.data[0, 0, 0, 0] == 1.0 and padded.data[1, 0, 0, 0] == -9.0
    assert padded.data[0, -1, -1, -1] == 1.0 and padded.data[1, -1, -1, -1] == -9.0


@settings(max_examples=60, deadline=None)
@given(shape=st.tuples(*[st.integers(1, 8)] * 3), target=st.tuples(*[st.integers(1, 12)] * 3))
def test_pad_or_crop_round_trips(shape, target):
    volume = volume_of(np.random.default_rng(5).random(shape), make_affine((1.0, 2.0, 0.5), (1.0, 2.0, 3.0)))
    there = pad_or_crop(volume, target)
    back = pad_or_crop(there, shape)
    np.testing.assert_allclose(back.affine, volume.affine)
    kept = tuple(slice((n - min(n, t)) // 2, (n - min(n, t)) // 2 + min(n, t)) for n, t in zip(shape, target))
    # what survived the first step is back in place; anything cropped comes back as padding
    assert torch.equal(back.data[(0, *kept)], volume.data[(0, *kept)])
    if all(t >= n for n, t in zip(shape, target)):
        assert torch.equal(back.data, volume.data)


# --------------------------------------------------------------------------------------------
# normalize_mr
# --------------------------------------------------------------------------------------------


def brats_like(seed=0) -> tuple[Volume, np.ndarray]:
    """Two MR channels, skull-stripped: background exactly 0, brain positive."""
    rng = np.random.default_rng(seed)
    brain = ellipsoid((16, 18, 14), (8, 9, 7), (6, 7, 5))
    first = np.zeros(brain.shape, np.float32)
    first[brain] = rng.gamma(4.0, 50.0, int(brain.sum()))
    second = first * 10 + 3
    second[~brain] = 0
    return Volume(torch.from_numpy(np.stack([first, second])), np.eye(4)), brain


def test_mr_percentiles_map_to_zero_and_one_and_background_stays_zero():
    volume, brain = brats_like()
    normalised = normalize_mr(volume)
    for channel in range(2):
        values = volume.data[channel].numpy()[brain]
        low, high = np.percentile(values, [1, 99])
        expected = np.clip((values - low) / (high - low), 0, 1)
        np.testing.assert_allclose(normalised.data[channel].numpy()[brain], expected, atol=1e-6)
        assert (normalised.data[channel].numpy()[~brain] == 0).all()
        # 1% of the brain is at or below the 1st percentile: clipped to 0; likewise at the top
        assert np.isclose((normalised.data[channel].numpy()[brain] == 0).mean(), 0.01, atol=0.002)
        assert np.isclose((normalised.data[channel].numpy()[brain] == 1).mean(), 0.01, atol=0.002)
    # channel 1 is an affine function of channel 0, so per-channel normalisation makes them equal
    torch.testing.assert_close(normalised.data[0], normalised.data[1])
    np.testing.assert_array_equal(normalised.affine, volume.affine)


def test_mr_mask_replaces_the_nonzero_foreground():
    volume, brain = brats_like()
    inner = torch.from_numpy(ellipsoid(brain.shape, (8, 9, 7), (3, 3, 3)))
    normalised = normalize_mr(volume, percentiles=(0, 100), mask=inner)
    assert (normalised.data[:, ~inner] == 0).all()
    assert normalised.data[0][inner].min() == 0 and normalised.data[0][inner].max() == 1


def test_mr_constant_channel_becomes_zero_instead_of_dividing_by_zero():
    volume, brain = brats_like()
    data = volume.data.clone()
    data[1] = 0  # a missing modality
    normalised = normalize_mr(volume.with_data(data))
    assert torch.isfinite(normalised.data).all()
    assert (normalised.data[1] == 0).all()


def test_mr_without_foreground_is_an_error_naming_the_file(tmp_path):
    empty = Volume(torch.zeros(1, 4, 4, 4), np.eye(4), tmp_path / "blank.nii.gz")
    with pytest.raises(ValueError, match="blank.nii.gz"):
        normalize_mr(empty)


# --------------------------------------------------------------------------------------------
# equalize_ct
# --------------------------------------------------------------------------------------------


def test_ct_equalisation_is_monotonic_into_zero_one_with_air_at_zero():
    hu, _ = synthetic_head_ct()
    equalised = equalize_ct(volume_of(hu)).data[0].numpy().ravel()
    order = np.argsort(hu.ravel(), kind="stable")
    assert (np.diff(equalised[order]) >= 0).all()
    assert equalised.min() == 0 and equalised.max() == 1
    assert (equalised[hu.ravel() <= -500] == 0).all() and (equalised[hu.ravel() > -500] > 0).all()


def test_ct_equalisation_flattens_the_foreground_histogram():
    rng = np.random.default_rng(6)
    # mostly soft tissue near 40 HU, some bone: very far from uniform in HU
    foreground = np.concatenate([rng.normal(40, 12, 20000), rng.normal(900, 300, 4000)]).round()
    hu = np.concatenate([np.full(30000, -1024.0), foreground]).reshape(54, 20, 50)
    equalised = equalize_ct(volume_of(hu)).data[0].numpy().ravel()
    counts, _ = np.histogram(equalised[hu.ravel() > -500], bins=10, range=(0, 1))
    np.testing.assert_allclose(counts / counts.sum(), 0.1, atol=0.02)
    hu_counts, _ = np.histogram(foreground, bins=10)
    assert (hu_counts / hu_counts.sum()).max() > 0.5  # the input really was skewed


def test_ct_values_beyond_the_hu_range_are_clipped():
    hu = np.array([-3024.0, -1024.0, 0.0, 50.0, 3071.0, 8000.0]).reshape(1, 1, 6)
    equalised = equalize_ct(volume_of(hu)).data[0, 0, 0].tolist()
    assert equalised[0] == equalised[1] == 0.0
    assert equalised[4] == equalised[5] == 1.0
    assert equalised[2] == pytest.approx(1 / 4) and equalised[3] == pytest.approx(2 / 4)


def test_ct_textbook_equalisation_counts_the_air_too():
    hu = np.array([-1024.0] * 6 + [40.0] * 2).reshape(1, 2, 4)
    equalised = equalize_ct(volume_of(hu), background_hu=None).data[0].numpy().ravel()
    np.testing.assert_allclose(equalised, [0.75] * 6 + [1.0] * 2)


# --------------------------------------------------------------------------------------------
# foreground_mask
# --------------------------------------------------------------------------------------------


def test_otsu_foreground_of_a_raw_head_ct_is_the_filled_head_without_the_table():
    hu, head = synthetic_head_ct()
    mask = foreground_mask(volume_of(hu), threshold="otsu")
    assert mask.dtype == torch.bool and tuple(mask.shape) == hu.shape
    assert torch.equal(mask, torch.from_numpy(head))


def test_default_foreground_of_preprocessed_ct_is_the_head():
    hu, head = synthetic_head_ct()
    assert torch.equal(foreground_mask(equalize_ct(volume_of(hu))), torch.from_numpy(head))


def test_mr_foreground_is_any_channel_above_zero():
    brain = ellipsoid((12, 12, 12), (6, 6, 6), (4, 4, 4))
    first, second = np.zeros((2, 12, 12, 12), np.float32)
    first[brain & (np.arange(12) < 6)[:, None, None]] = 0.5  # each channel shows half the brain
    second[brain & (np.arange(12) >= 6)[:, None, None]] = 0.2
    mask = foreground_mask(Volume(torch.from_numpy(np.stack([first, second])), np.eye(4)))
    assert torch.equal(mask, torch.from_numpy(brain))


def test_foreground_with_an_explicit_threshold():
    hu, head = synthetic_head_ct()
    assert torch.equal(foreground_mask(volume_of(hu), threshold=-500.0), torch.from_numpy(head))
    assert not foreground_mask(volume_of(hu), threshold=5000.0).any()


# --------------------------------------------------------------------------------------------
# check_coregistration
# --------------------------------------------------------------------------------------------


def head_cohort(tmp_path, shifts) -> list[Volume]:
    cohort = []
    for position, shift in enumerate(shifts):
        hu, _ = synthetic_head_ct(shape=(40, 40, 36), shift=shift, seed=position)
        scan = volume_of(hu, make_affine(origin=(-20, -20, -18)), tmp_path / f"scan{position}.nii.gz")
        cohort.append(equalize_ct(scan))
    return cohort


def test_aligned_cohort_raises_no_warning(tmp_path):
    cohort = head_cohort(tmp_path, [(0, 0, 0), (1, 0, 0), (0, -1, 1), (0, 1, 0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_coregistration(cohort, tolerance_mm=5.0) == []


def test_shifted_scan_is_named_in_a_warning(tmp_path):
    cohort = head_cohort(tmp_path, [(0, 0, 0), (1, 0, 0), (0, 0, 1), (8, 0, 0)])
    with pytest.warns(CoregistrationWarning, match=r"scan3\.nii\.gz.*centroid is 7\.\d mm") as caught:
        flagged = check_coregistration(cohort, tolerance_mm=5.0)
    assert flagged == [str(tmp_path / "scan3.nii.gz")]
    assert len(caught) == 1


def test_scan_on_another_grid_is_flagged_even_with_the_same_anatomy(tmp_path):
    cohort = head_cohort(tmp_path, [(0, 0, 0)] * 3)
    moved = cohort[2].with_data(cohort[2].data, cohort[2].affine @ make_affine(origin=(3, 0, 0)))
    with pytest.warns(CoregistrationWarning, match=r"scan2\.nii\.gz.*grid") as caught:
        # the anatomy moved 3 mm in the world, within tolerance; the grid did not match
        assert check_coregistration([*cohort[:2], moved]) == [str(tmp_path / "scan2.nii.gz")]
    assert "centroid" not in str(caught[0].message)


def test_scan_of_a_different_size_is_flagged(tmp_path):
    cohort = head_cohort(tmp_path, [(0, 0, 0)] * 3)
    hu, _ = synthetic_head_ct(shape=(40, 40, 36), scale=1.6)
    large = equalize_ct(volume_of(hu, cohort[0].affine, tmp_path / "large.nii.gz"))
    with pytest.warns(CoregistrationWarning, match=r"large\.nii\.gz.*extent"):
        assert check_coregistration([*cohort, large], tolerance_mm=5.0) == [str(tmp_path / "large.nii.gz")]


def test_footprints_stand_in_for_volumes(tmp_path):
    cohort = head_cohort(tmp_path, [(0, 0, 0), (0, 0, 0), (8, 0, 0)])
    footprints = [foreground_footprint(volume, name=f"#{index}") for index, volume in enumerate(cohort)]
    assert all(isinstance(footprint, Footprint) for footprint in footprints)
    with pytest.warns(CoregistrationWarning, match="#2"):
        assert check_coregistration(footprints, tolerance_mm=5.0) == ["#2"]


def test_footprint_measures_world_millimetres():
    mask = torch.zeros(10, 10, 10, dtype=torch.bool)
    mask[2:4, 5:6, 0:10] = True
    affine = make_affine(spacing=(2.0, 1.0, 0.5), origin=(100.0, 0.0, -5.0))
    footprint = foreground_footprint(Volume(torch.zeros(1, 10, 10, 10), affine), mask, name="box")
    np.testing.assert_allclose(footprint.centroid_mm, [105.0, 5.0, -2.75])
    np.testing.assert_allclose(footprint.extent_mm, [4.0, 1.0, 5.0])


def test_empty_scan_and_tiny_cohorts(tmp_path):
    cohort = head_cohort(tmp_path, [(0, 0, 0)] * 2)
    blank = Volume(torch.zeros_like(cohort[0].data), cohort[0].affine, tmp_path / "blank.nii.gz")
    with pytest.warns(CoregistrationWarning, match=r"blank\.nii\.gz.*empty"):
        assert check_coregistration([*cohort, blank]) == [str(tmp_path / "blank.nii.gz")]
    assert check_coregistration(cohort[:1]) == []
    assert check_coregistration([]) == []


# --------------------------------------------------------------------------------------------
# pipelines
# --------------------------------------------------------------------------------------------


def test_ct_preset_end_to_end():
    hu, _ = synthetic_head_ct(shape=(14, 15, 13), seed=3)
    affine = make_affine(spacing=(2.0, 2.0, 2.0), origin=(-14.0, -15.0, -13.0))
    pipeline = preset_pipeline("ct", shape=32)
    assert pipeline.names == ("resample", "pad_or_crop", "equalize_ct")
    result = pipeline(volume_of(hu, affine))
    assert result.shape == (32, 32, 32)
    np.testing.assert_allclose(result.spacing, (1.0, 1.0, 1.0))
    assert result.data.min() == 0 and result.data.max() == 1
    assert (result.data[0, 0] == 0).all()  # padding is air
    # the 28 x 30 x 26 mm field of view, centred in 32 voxels: padded by 2, 1 and 3 voxels before
    input_corner = to_world(affine, np.array([-0.5, -0.5, -0.5]))
    np.testing.assert_allclose(to_world(result.affine, np.array([1.5, 0.5, 2.5])), input_corner)


def test_mr_preset_end_to_end():
    volume, brain = brats_like()
    result = preset_pipeline("mr", spacing=(1.0, 1.0, 2.0), shape=(20, 20, 10))(volume)
    assert result.channels == 2 and result.shape == (20, 20, 10)
    np.testing.assert_allclose(result.spacing, (1.0, 1.0, 2.0))
    assert result.data.min() == 0 and result.data.max() == 1
    assert (result.data[:, 0] == 0).all()


def test_label_preset_end_to_end():
    labels = np.random.default_rng(7).choice([1, 2, 3, 5], size=(10, 12, 9)).astype(np.float32)
    result = preset_pipeline("label", spacing=0.5, shape=(16, 16, 24))(volume_of(labels))
    assert result.shape == (16, 16, 24)
    assert set(result.data.unique().tolist()) == {0.0, 1.0, 2.0, 3.0, 5.0}  # 0 is the padding


def test_pipeline_applies_named_steps_in_order():
    calls = []

    def record(name):
        def step(volume):
            calls.append(name)
            return volume.with_data(volume.data + 1)

        return step

    pipeline = Pipeline((("first", record("first")), ("second", record("second"))))
    result = pipeline(volume_of(np.zeros((2, 2, 2))))
    assert calls == ["first", "second"] and pipeline.names == ("first", "second")
    assert (result.data == 2).all()


def test_pipeline_names_the_step_that_returns_something_else():
    pipeline = Pipeline((("resample", resample), ("broken", lambda volume: volume.data)))
    with pytest.raises(TypeError, match="'broken'"):
        pipeline(volume_of(np.zeros((2, 2, 2))))


# --------------------------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------------------------

VOLUME = volume_of(np.ones((4, 4, 4)))
BAD_CALLS = [
    (lambda: resample(VOLUME.data), TypeError, "volume"),
    (lambda: resample(VOLUME, 0), ValueError, "spacing"),
    (lambda: resample(VOLUME, (1.0, -1.0, 1.0)), ValueError, "spacing"),
    (lambda: resample(VOLUME, (1.0, 1.0)), ValueError, "spacing"),
    (lambda: resample(VOLUME, "1mm"), TypeError, "spacing"),
    (lambda: resample(VOLUME, float("nan")), ValueError, "spacing"),
    (lambda: resample(VOLUME, labels="yes"), TypeError, "labels"),
    (lambda: resample(Volume(torch.ones(1, 2, 2, 2), np.zeros((4, 4)))), ValueError, "zero-length"),
    (lambda: pad_or_crop(VOLUME, (0, 4, 4)), ValueError, "shape"),
    (lambda: pad_or_crop(VOLUME, 2.5), TypeError, "shape"),
    (lambda: pad_or_crop(VOLUME, True), TypeError, "shape"),
    (lambda: pad_or_crop(VOLUME, 4, value=float("inf")), ValueError, "value"),
    (lambda: normalize_mr(VOLUME, percentiles=(99, 1)), ValueError, "percentiles"),
    (lambda: normalize_mr(VOLUME, percentiles=(-1, 50)), ValueError, "percentiles"),
    (lambda: normalize_mr(VOLUME, percentiles=5), TypeError, "percentiles"),
    (lambda: normalize_mr(VOLUME, mask=torch.ones(3, 3, 3)), ValueError, "mask"),
    (lambda: normalize_mr(VOLUME, mask=np.ones((4, 4, 4))), TypeError, "mask"),
    (lambda: equalize_ct(VOLUME, hu_range=(100, 0)), ValueError, "hu_range"),
    (lambda: equalize_ct(VOLUME, bins=1), ValueError, "bins"),
    (lambda: equalize_ct(VOLUME, bins=10.5), TypeError, "bins"),
    (lambda: equalize_ct(VOLUME, background_hu=5000), ValueError, "background_hu"),
    (lambda: foreground_mask(VOLUME, threshold="li"), ValueError, "threshold"),
    (lambda: check_coregistration([VOLUME, 3]), TypeError, r"volumes\[1\]"),
    (lambda: check_coregistration([VOLUME], tolerance_mm=0), ValueError, "tolerance_mm"),
    (lambda: preset_pipeline("dwi"), ValueError, "pipeline"),
    (lambda: preset_pipeline("ct", spacing=0), ValueError, "spacing"),
    (lambda: Pipeline((("step", 3),)), TypeError, r"steps\[0\]"),
    (lambda: Pipeline(resample), TypeError, "steps"),
    (lambda: Pipeline((("", resample),)), TypeError, r"steps\[0\]"),
    (lambda: Pipeline((("same", resample), ("same", resample))), ValueError, "distinct"),
]


@pytest.mark.parametrize("call, error, argument", BAD_CALLS, ids=[f"{i}-{case[2]}" for i, case in enumerate(BAD_CALLS)])
def test_bad_arguments_raise_naming_the_argument(call, error, argument):
    with pytest.raises(error, match=argument):
        call()


# --------------------------------------------------------------------------------------------
# the preprocess command
# --------------------------------------------------------------------------------------------


def run_command(*argv) -> int:
    parser = argparse.ArgumentParser(prog="brainkernels")
    parser.add_argument("--debug", action="store_true")  # as the CLI's parser has
    register_command(parser.add_subparsers(dest="command", required=True))
    arguments = parser.parse_args(["preprocess", *map(str, argv)])
    return arguments.run(arguments)


def run_folders(tmp_path, pipeline, *options) -> int:
    """The command from ``tmp_path/in`` to ``tmp_path/out``."""
    return run_command("--pipeline", pipeline, "--in", tmp_path / "in", "--out", tmp_path / "out", *options)


def write_scan(path, array, spacing=2.0, origin=(0.0, 0.0, 0.0)):
    save_nifti(volume_of(array, make_affine((spacing,) * 3, origin)), path)


def test_command_mirrors_nested_folders(tmp_path, capsys):
    hu, _ = synthetic_head_ct(shape=(14, 15, 13))
    for relative in ["a.nii.gz", "site1/b.nii", "site1/deeper/c.nii.gz"]:
        write_scan(tmp_path / "in" / relative, hu)
    (tmp_path / "in" / "site1" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / ".a.nii.gz.partial.nii.gz").write_bytes(b"half-written")

    assert run_folders(tmp_path, "ct", "--shape", 32) == 0

    target = tmp_path / "out"
    written = sorted(str(path.relative_to(target)) for path in target.rglob("*") if path.is_file())
    assert written == ["a.nii.gz", "site1/b.nii", "site1/deeper/c.nii.gz"]
    result = load_nifti(target / "site1/deeper/c.nii.gz")
    assert result.shape == (32, 32, 32) and result.data.max() == 1
    np.testing.assert_allclose(result.spacing, (1.0, 1.0, 1.0))
    captured = capsys.readouterr()
    assert "co-registration check: 0 of 3 scans" in captured.out
    assert "preprocessed 3 scans (ct)" in captured.out
    assert captured.err == ""  # no progress bar when stderr is not a terminal


def test_command_ct_is_silent_for_small_shifts(tmp_path, capsys):
    for index, shift in enumerate([(0, 0, 0), (0, 0, 0), (0, 0, 0), (5, 0, 0)]):
        hu, _ = synthetic_head_ct(shape=(20, 20, 18), shift=shift, seed=index)
        write_scan(tmp_path / "in" / f"scan{index}.nii.gz", hu, spacing=1.0)
    assert run_folders(tmp_path, "ct", "--shape", 24, "--quiet") == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""  # 5 mm is within the default tolerance


def test_command_ct_warns_beyond_the_tolerance(tmp_path, capsys):
    for index in range(4):
        hu, _ = synthetic_head_ct(shape=(40, 40, 36), seed=index)
        origin = (-20.0, -20.0, -18.0) if index < 3 else (10.0, -20.0, -18.0)  # 30 mm off in the world
        write_scan(tmp_path / "in" / f"scan{index}.nii.gz", hu, spacing=1.0, origin=origin)
    assert run_folders(tmp_path, "ct", "--shape", 40) == 0
    captured = capsys.readouterr()
    assert "warning: scan3.nii.gz: may not be co-registered" in captured.err
    assert captured.err.count("warning:") == 1
    assert "1 of 4 scans look off" in captured.out


def test_command_label_pipeline_writes_uint8_with_the_label_set(tmp_path):
    labels = np.random.default_rng(8).choice([0, 1, 2, 4], size=(8, 8, 8)).astype(np.float32)
    write_scan(tmp_path / "in" / "seg.nii.gz", labels)
    assert run_folders(tmp_path, "label", "--shape", 16, 16, 20) == 0
    image = nib.load(tmp_path / "out" / "seg.nii.gz")
    assert image.get_data_dtype() == np.uint8 and image.shape == (16, 16, 20)
    assert set(np.unique(np.asarray(image.dataobj)).tolist()) == {0, 1, 2, 4}


def test_command_refuses_an_empty_folder(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    assert run_folders(tmp_path, "mr") == 2
    assert "is empty" in capsys.readouterr().err


def test_command_refuses_a_folder_without_nifti(tmp_path, capsys):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "sub" / "scan.dcm").write_bytes(b"DICM")
    assert run_folders(tmp_path, "mr") == 2
    assert "no .nii or .nii.gz files" in capsys.readouterr().err


def test_command_refuses_a_missing_input_folder(tmp_path, capsys):
    assert run_command("--pipeline", "mr", "--in", tmp_path / "nowhere", "--out", tmp_path / "out") == 2
    assert "not a folder" in capsys.readouterr().err


def test_command_refuses_a_non_empty_output_without_overwrite(tmp_path, capsys):
    volume, _ = brats_like()
    save_nifti(volume, tmp_path / "in" / "subject.nii.gz")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")

    assert run_folders(tmp_path, "mr", "--shape", 20) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert not (tmp_path / "out" / "subject.nii.gz").exists()

    assert run_folders(tmp_path, "mr", "--shape", 20, "--overwrite", "--quiet") == 0
    assert load_nifti(tmp_path / "out" / "subject.nii.gz").channels == 2
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_command_refuses_an_output_inside_the_input(tmp_path, capsys):
    write_scan(tmp_path / "in" / "a.nii.gz", np.ones((4, 4, 4)))
    assert run_command("--pipeline", "mr", "--in", tmp_path / "in", "--out", tmp_path / "in" / "out") == 2
    assert "inside" in capsys.readouterr().err


@pytest.mark.parametrize(
    "option, values, message",
    [("--spacing", [1, 2], "--spacing takes"), ("--shape", [0], "shape"), ("--spacing", [-1], "spacing")],
)
def test_command_rejects_bad_geometry(tmp_path, capsys, option, values, message):
    write_scan(tmp_path / "in" / "a.nii.gz", np.ones((4, 4, 4)))
    assert run_folders(tmp_path, "mr", option, *values) == 2
    assert message in capsys.readouterr().err


def test_command_names_an_unreadable_file(tmp_path, capsys):
    write_scan(tmp_path / "in" / "a.nii.gz", np.ones((4, 4, 4)))
    (tmp_path / "in" / "b.nii.gz").write_bytes(b"not gzip at all")
    assert run_folders(tmp_path, "mr", "--shape", 4, "--quiet") == 1
    assert "b.nii.gz" in capsys.readouterr().err
    assert (tmp_path / "out" / "a.nii.gz").exists()
