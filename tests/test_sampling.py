"""Patch samplers: bounds, seeding, errors, and their distributions checked statistically with
fixed seeds (so a pass or a failure is reproducible, never flaky)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from brainkernels.data.sampling import (
    PPR_PATCHES_PER_VOLUME,
    center_weighted_density,
    center_weighted_patch_starts,
    center_weighted_positions,
    discard_background_patches,
    uniform_centers,
    uniform_foreground_centers,
)
from brainkernels.ops.extract_patches3d import extract_patches3d_reference


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def trapezoid_cdf(u: np.ndarray) -> np.ndarray:
    """CDF of X + Y, X ~ U[-1/3, 1/3], Y ~ U[-2/3, 2/3], worked out by hand."""
    u = np.clip(u, -1.0, 1.0)
    rising = 9 / 16 * (u + 1) ** 2
    flat = 1 / 4 + 3 / 4 * (u + 1 / 3)
    falling = 1 - 9 / 16 * (1 - u) ** 2
    return np.where(u < -1 / 3, rising, np.where(u <= 1 / 3, flat, falling))


def head_mask(shape=(20, 24, 16)) -> torch.Tensor:
    """A ball of foreground off-centre in a (D, H, W) volume."""
    grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in shape), indexing="ij"), dim=-1).float()
    return (grid - torch.tensor([8.0, 12.0, 9.0])).norm(dim=-1) < 6


# --- PPR -------------------------------------------------------------------------------------


def test_uniform_centers_cover_the_volume_uniformly():
    shape = (5, 7, 3)
    centers = uniform_centers(shape, 70_000, seeded(1))
    assert centers.dtype == torch.int64 and centers.shape == (70_000, 3)
    for axis, extent in enumerate(shape):
        counts = torch.bincount(centers[:, axis], minlength=extent)
        assert len(counts) == extent  # nothing past the last voxel
        assert stats.chisquare(counts.numpy()).pvalue > 0.01
    assert centers.min() >= 0


def test_uniform_centers_default_count_is_the_papers():
    assert PPR_PATCHES_PER_VOLUME == 256
    assert uniform_centers((4, 4, 4), generator=seeded()).shape == (256, 3)


def test_uniform_foreground_centers_lie_in_the_foreground_uniformly():
    mask = head_mask()
    centers = uniform_foreground_centers(mask, 100_000, seeded(2))
    assert centers.dtype == torch.int64 and centers.shape == (100_000, 3)
    assert mask[tuple(centers.T)].all()
    flat = centers[:, 0] * mask.shape[1] * mask.shape[2] + centers[:, 1] * mask.shape[2] + centers[:, 2]
    counts = torch.bincount(flat, minlength=mask.numel())[mask.flatten()]
    assert (counts > 0).all()  # every foreground voxel can be drawn
    assert stats.chisquare(counts.numpy()).pvalue > 0.01


def test_uniform_foreground_centers_accept_any_nonzero_mask():
    mask = torch.zeros(4, 4, 4)
    mask[1, 2, 3] = 0.5
    assert uniform_foreground_centers(mask, 10, seeded()).tolist() == [[1, 2, 3]] * 10


def test_uniform_foreground_centers_errors():
    with pytest.raises(ValueError, match="mask has no foreground voxels"):
        uniform_foreground_centers(torch.zeros(4, 4, 4, dtype=torch.bool), 8, seeded())
    with pytest.raises(ValueError, match=r"mask must be a \(D, H, W\) tensor; got torch.Size\(\[1, 4, 4, 4\]\)"):
        uniform_foreground_centers(torch.ones(1, 4, 4, 4, dtype=torch.bool), 8, seeded())
    with pytest.raises(ValueError, match="count must be a non-negative int; got -1"):
        uniform_foreground_centers(torch.ones(4, 4, 4, dtype=torch.bool), -1, seeded())


@pytest.mark.parametrize(
    "sampler",
    [
        pytest.param(lambda generator: uniform_centers((9, 8, 7), 64, generator), id="volume"),
        pytest.param(lambda generator: uniform_foreground_centers(head_mask(), 64, generator), id="foreground"),
    ],
)
def test_samplers_repeat_with_the_seed(sampler):
    assert torch.equal(sampler(seeded(3)), sampler(seeded(3)))
    assert not torch.equal(sampler(seeded(3)), sampler(seeded(4)))


@pytest.mark.parametrize("patch_size", [1, 3, 4, 7])
def test_discard_background_patches_matches_extracted_patches(patch_size):
    mask = head_mask()
    centers = uniform_centers(mask.shape, 500, seeded(5))
    patches = extract_patches3d_reference(mask[None].float(), centers, patch_size)
    expected = centers[patches.flatten(1).any(dim=1)]
    kept = discard_background_patches(centers, mask, patch_size)
    assert torch.equal(kept, expected)
    assert 0 < len(kept) < len(centers)  # both cases occur


def test_discard_background_patches_by_hand():
    mask = torch.zeros(8, 8, 8, dtype=torch.bool)
    mask[4, 4, 4] = True
    centers = torch.tensor([[4, 4, 4], [5, 5, 5], [6, 4, 4], [0, 0, 0], [6, 5, 3], [2, 4, 4]])
    # size 4 covers c - 2 ... c + 1: (6, 4, 4) reaches 4 in d, (2, 4, 4) only reaches 3.
    assert discard_background_patches(centers, mask, 4).tolist() == [[4, 4, 4], [5, 5, 5], [6, 4, 4], [6, 5, 3]]
    assert discard_background_patches(centers, mask, 3).tolist() == [[4, 4, 4], [5, 5, 5]]
    assert discard_background_patches(centers, torch.zeros_like(mask), 3).shape == (0, 3)
    assert discard_background_patches(centers[:0], mask, 3).shape == (0, 3)


def test_discard_background_patches_errors():
    mask = torch.ones(4, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"centers must have shape \(N, 3\)"):
        discard_background_patches(torch.zeros(5, 2, dtype=torch.long), mask, 3)
    with pytest.raises(ValueError, match="patch_size must be a positive int; got 0"):
        discard_background_patches(torch.zeros(5, 3, dtype=torch.long), mask, 0)


# --- PatchDDM --------------------------------------------------------------------------------


def test_center_weighted_density_is_the_trapezoid():
    u = torch.linspace(-1.5, 1.5, 30_001, dtype=torch.float64)
    density = center_weighted_density(u)
    assert torch.trapezoid(density, u).item() == pytest.approx(1.0, abs=1e-6)
    assert center_weighted_density(torch.tensor([0.0, 1 / 3, 2 / 3, 1.0, -1.2])).tolist() == pytest.approx(
        [0.75, 0.75, 0.375, 0.0, 0.0]
    )
    # The density is the derivative of the hand-derived CDF the KS tests below use.
    inner = u[(u.abs() < 0.999) & ((u.abs() - 1 / 3).abs() > 1e-3)].numpy()
    slope = (trapezoid_cdf(inner + 1e-6) - trapezoid_cdf(inner - 1e-6)) / 2e-6
    assert np.allclose(slope, center_weighted_density(torch.from_numpy(inner)).numpy(), atol=1e-5)


def test_center_weighted_positions_follow_the_trapezoid():
    positions = center_weighted_positions(50_000, seeded(6))
    assert positions.shape == (50_000, 3) and positions.dtype == torch.float64
    assert positions.abs().max() <= 1
    for axis in range(3):
        assert stats.kstest(positions[:, axis].numpy(), trapezoid_cdf).pvalue > 0.01
    assert positions.mean(dim=0).abs().max() < 0.01
    # Var(X + Y) = (1/3)^2 / 3 + (2/3)^2 / 3 = 5/27
    assert positions.var(dim=0).tolist() == pytest.approx([5 / 27] * 3, rel=0.02)
    assert np.abs(np.corrcoef(positions.T.numpy()) - np.eye(3)).max() < 0.02  # axes independent


def test_center_weighted_positions_are_not_uniform():
    # The KS test above can fail: it tells the trapezoid apart from a uniform distribution.
    positions = center_weighted_positions(50_000, seeded(6))[:, 0].numpy()
    assert stats.kstest(positions, stats.uniform(loc=-1, scale=2).cdf).pvalue < 1e-6
    uniform = torch.rand(50_000, generator=seeded(6), dtype=torch.float64).numpy() * 2 - 1
    assert stats.kstest(uniform, trapezoid_cdf).pvalue < 1e-6


def test_center_weighted_patch_starts_keep_patches_inside():
    shape, patch = (20, 13, 9), (8, 13, 4)
    starts = center_weighted_patch_starts(shape, patch, 20_000, seeded(7))
    assert starts.dtype == torch.int64 and starts.shape == (20_000, 3)
    assert starts.min() >= 0
    assert (starts + torch.tensor(patch) <= torch.tensor(shape)).all()
    assert starts[:, 1].eq(0).all()  # the patch spans the axis: one admissible start
    assert starts[:, 0].max() == 12 and starts[:, 0].min() == 0  # both ends are reachable


def test_center_weighted_patch_starts_follow_the_discretised_trapezoid():
    last = 10  # starts 0 ... 10; start k takes the positions u that round to it
    starts = center_weighted_patch_starts((42, 42, 42), 32, 60_000, seeded(8))
    edges = np.clip((np.arange(last + 2) - 0.5) / last * 2 - 1, -1, 1)
    expected = np.diff(trapezoid_cdf(edges)) * len(starts)
    for axis in range(3):
        counts = torch.bincount(starts[:, axis], minlength=last + 1).numpy()
        assert stats.chisquare(counts, expected).pvalue > 0.01
    centre, edge = np.diff(trapezoid_cdf(edges))[[5, 0]]
    assert centre > 4 * edge  # the centre is favoured


def test_center_weighted_patch_starts_repeat_with_the_seed():
    first = center_weighted_patch_starts((32, 32, 32), (16, 8, 4), 100, seeded(9))
    assert torch.equal(first, center_weighted_patch_starts((32, 32, 32), (16, 8, 4), 100, seeded(9)))
    assert not torch.equal(first, center_weighted_patch_starts((32, 32, 32), (16, 8, 4), 100, seeded(10)))


@pytest.mark.parametrize(
    ("volume_shape", "patch_shape", "count", "message"),
    [
        ((16, 16, 16), 17, 4, r"patch_shape \(17, 17, 17\) does not fit inside volume_shape \(16, 16, 16\)"),
        ((16, 16), 8, 4, "volume_shape must be three positive ints"),
        ((16, 16, 16), (8, 0, 8), 4, "patch_shape must be three positive ints"),
        ((16, 16, 16), 8, -2, "count must be a non-negative int"),
        ((16, 16, 16), 8, 2.0, "count must be a non-negative int"),
    ],
)
def test_center_weighted_patch_starts_errors(volume_shape, patch_shape, count, message):
    with pytest.raises(ValueError, match=message):
        center_weighted_patch_starts(volume_shape, patch_shape, count, seeded())
