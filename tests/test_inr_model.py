"""The INR auto-decoder's parts: the latent table, SGLA, the test split, latent fitting, and the
image metrics it is evaluated with."""

import math
import warnings

import numpy as np
import pytest
import torch

from brainkernels.data.layouts.dhcp import DHCPScan
from brainkernels.inr.data import ModelGrid, ModelInput, SampledVoxels
from brainkernels.inr.evaluate import head_mask
from brainkernels.inr.infer import atlas_latents, check_age, fit_latent
from brainkernels.inr.model import AutoDecoder, bound_norm
from brainkernels.inr.train import INRConfig, latent_keys, reconstruction_loss, split_test_subjects, unmirrored_rows
from brainkernels.metrics.image import head_circumference_cm, mae, psnr, ssim
from brainkernels.ops.coordinate_mlp import api as coordinate_mlp_api
from brainkernels.ops.coordinate_mlp import grid_coordinates

SMALL = dict(dims=2, latent_size=4, width=8, depth=3)


def batch(indices, points=5):
    torch.manual_seed(0)
    return {"coords": torch.rand(len(indices), points, 2) - 0.5, "targets": torch.rand(len(indices), points),
            "age": torch.full((len(indices),), 0.5), "latent_index": torch.tensor(indices)}


@pytest.mark.parametrize(("norm_type", "bounded"), [(2.0, [0.3, 0.4, 0.0, 0.0]), (math.inf, [0.375, 0.5, 0.0, 0.0])])
def test_latents_start_at_zero_and_stay_within_the_norm_bound(norm_type, bounded):
    model = AutoDecoder(3, max_norm=0.5, norm_type=norm_type, **SMALL)
    assert model.latents.weight.shape == (4, 4) and not model.latents.weight.any()
    with torch.no_grad():
        model.latents.weight[1] = torch.tensor([3.0, 4.0, 0.0, 0.0])
    torch.testing.assert_close(model.latent(1), torch.tensor(bounded))
    assert model.global_index == 3


@pytest.mark.parametrize(("norm_type", "bounded"), [(2.0, [0.3, 0.4, 0.0, 0.0]), (math.inf, [0.375, 0.5, 0.0, 0.0])])
def test_fitted_latents_are_bounded_as_the_table_bounds_its_rows(norm_type, bounded):
    torch.testing.assert_close(bound_norm(torch.tensor([3.0, 4.0, 0.0, 0.0]), 0.5, norm_type), torch.tensor(bounded))
    inside = torch.tensor([0.1, -0.2, 0.0, 0.0])
    assert torch.equal(bound_norm(inside, 0.5, norm_type), inside)


def test_only_the_l2_and_linf_bounds_are_accepted():
    with pytest.raises(ValueError, match="norm_type"):
        AutoDecoder(2, norm_type=1.0, **SMALL)
    with pytest.raises(ValueError, match="norm_type"):
        INRConfig(norm_type=3.0)
    assert INRConfig().norm_type == math.inf  # the paper's code


def test_fused_and_reference_networks_agree():
    fused, reference = AutoDecoder(2, fused=True, **SMALL), AutoDecoder(2, fused=False, **SMALL)
    reference.load_state_dict(fused.state_dict())
    with torch.no_grad():
        fused.latents.weight.normal_(0, 0.3)
        reference.latents.weight.copy_(fused.latents.weight)
    items = batch([0, 1])
    torch.testing.assert_close(fused(items["coords"], items["age"], items["latent_index"]),
                               reference(items["coords"], items["age"], items["latent_index"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("sgla", "trained_rows"), [(0.0, {0, 1}), (1.0, {2})])
def test_sgla_decodes_the_batch_from_the_global_latent(sgla, trained_rows):
    model = AutoDecoder(2, **SMALL)
    reconstruction_loss(sgla)(model, batch([0, 1])).backward()
    rows = {row for row in range(3) if model.latents.weight.grad[row].any()}
    assert rows == trained_rows


def scan(subject, session, age):
    return DHCPScan(subject, session, age, f"{subject}_{session}.nii.gz", None)


def test_ssl_shares_a_latent_across_a_subjects_scans():
    scans = [scan("a", "1", 30.0), scan("a", "2", 40.0), scan("b", "1", 35.0)]
    assert latent_keys(scans, ssl=True, flip=False) == ["a", "b"]
    assert latent_keys(scans, ssl=False, flip=False) == ["a/1", "a/2", "b/1"]


def test_a_mirrored_baby_has_a_latent_of_its_own():
    scans = [scan("a", "1", 30.0), scan("a", "2", 40.0), scan("b", "1", 35.0)]
    assert latent_keys(scans, ssl=True, flip=True) == ["a", "b", "a#flip", "b#flip"]
    assert latent_keys(scans, ssl=False, flip=True) == ["a/1", "a/2", "b/1", "a/1#flip", "a/2#flip", "b/1#flip"]


def test_the_mean_latent_is_over_the_real_babies_only():
    keys = ["a", "b", "a#flip", "b#flip"]
    model = AutoDecoder(len(keys), **SMALL)
    with torch.no_grad():
        model.latents.weight[:4] = torch.tensor([[0.2] * 4, [0.4] * 4, [-0.9] * 4, [-0.9] * 4])
    assert unmirrored_rows(keys) == [0, 1]
    atlas = atlas_latents(model, unmirrored_rows(keys))
    torch.testing.assert_close(atlas["mean"], torch.full((4,), 0.3))
    assert not atlas["zero"].any()


class Prepared:
    """A cache entry's stand-in: the image and its head voxels."""

    def __init__(self, image):
        self.arrays = {"image": image, "head": torch.arange(image.numel())}

    def tensor(self, name):
        return self.arrays[name]


def test_flip_mirrors_half_of_the_items_left_right_under_their_own_latent():
    image = torch.rand(6, 5)
    grid = ModelGrid((6, 5, 3), (1.0, 1.0, 1.0), 2)
    voxels = SampledVoxels([Prepared(image)], [scan("a", "1", 30.0)], grid, [0], pixel_ratio=1.0,
                           foreground_share=0.5, mirrored_index=[1])
    coordinates = grid_coordinates((6, 5))
    views = {0: image, 1: torch.flip(image, [0])}  # what latent 0 and latent 1 are trained to show
    torch.manual_seed(0)
    seen = []
    for _ in range(40):
        item = voxels[0]
        seen.append(int(item["latent_index"]))
        at = torch.cdist(item["coords"], coordinates).argmin(dim=1)  # the grid voxel of each coordinate
        torch.testing.assert_close(item["targets"], views[seen[-1]].reshape(-1)[at])
    assert 10 < sum(seen) < 30  # about half mirrored
    unflipped = SampledVoxels([Prepared(image)], [scan("a", "1", 30.0)], grid, [0], 1.0, 0.5)
    assert {int(unflipped[0]["latent_index"]) for _ in range(10)} == {0}


def test_test_subjects_have_two_sessions_and_are_held_out_whole():
    scans = [scan(f"s{i}", str(k), 30.0 + k) for i in range(10) for k in range(1 + (i % 2))]
    training, test = split_test_subjects(scans, seed=0)
    assert len(test) == 1 and int(test[0][1:]) % 2 == 1
    assert all(s.subject_id not in test for s in training) and len(training) == len(scans) - 2
    assert split_test_subjects(scans[:1], seed=0) == (scans[:1], [])


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_fitting_a_latent_reproduces_an_image_decoded_from_a_known_latent(norm_type):
    torch.manual_seed(1)
    model = AutoDecoder(1, norm_type=norm_type, **SMALL).requires_grad_(False)
    known = torch.tensor([0.9, -0.8, 0.7, 0.0])  # L2 norm 1.4: reachable only under the L∞ bound
    target = model.network((12, 12), check_age(35.0), known)
    image = ModelInput(target, target > 0, 1.0, np.eye(4))
    fitted = fit_latent(model, image, 35.0, steps=300, lr=1e-2)
    before = torch.mean((model.network((12, 12), check_age(35.0), torch.zeros(4)) - target) ** 2)
    after = torch.mean((model.network((12, 12), check_age(35.0), fitted) - target) ** 2)
    if norm_type == math.inf:
        assert after < before / 4
    assert torch.linalg.vector_norm(fitted, ord=norm_type) <= model.max_norm + 1e-6


@pytest.mark.parametrize("voxels", [None, 40], ids=["whole grid", "sampled voxels"])
def test_fitting_a_latent_leaves_the_network_as_it_was_and_computes_no_weight_gradient(monkeypatch, voxels):
    torch.manual_seed(2)
    model = AutoDecoder(1, **SMALL)
    image = ModelInput(torch.rand(12, 12), torch.ones(12, 12, dtype=torch.bool), 1.0, np.eye(4))
    calls = []
    real = coordinate_mlp_api.coordinate_mlp_op
    monkeypatch.setattr(coordinate_mlp_api, "coordinate_mlp_op",
                        lambda *args: calls.append(args[-1]) or real(*args))  # its last argument: weight_grads
    model.latents.weight.requires_grad_(False)  # a mix, restored as it was
    before = {name: p.clone() for name, p in model.state_dict().items()}
    fit_latent(model, image, 35.0, steps=3, voxels=voxels)
    assert calls == [False] * 3
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == [name != "latents.weight" for name, _ in
                                                             model.named_parameters()]
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())


def test_ages_inside_the_range_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_age(26.0) == 0.0 and check_age(45.0) == 1.0
    with pytest.warns(UserWarning, match="extrapolation"):
        check_age(25.0)


def test_image_metrics():
    target = np.zeros((16, 16))
    predicted = target + 0.1
    assert psnr(predicted, target) == pytest.approx(20.0)
    assert mae(predicted, target) == pytest.approx(0.1)
    assert ssim(target, target) == pytest.approx(1.0) and ssim(predicted + np.eye(16) / 2, target) < 1
    with pytest.raises(ValueError, match="differs from target shape"):
        mae(np.zeros(3), np.zeros(4))


def test_the_head_mask_spans_scalp_and_brain_across_the_dark_skull_and_breaks_in_the_scalp():
    y, x = np.mgrid[:64, :64] - 31.5
    radius, angle = np.hypot(x, y), np.degrees(np.arctan2(y, x)) % 30
    image = np.where(radius < 10, 0.6, 0.0)  # the brain
    image[(radius >= 13) & (radius < 15) & (angle > 1.5)] = 0.8  # a thin scalp, broken every 30 degrees
    head = head_mask(torch.from_numpy(image), (2.5, 2.5, 2.5))
    assert head[radius < 14.5].all() and not head[radius > 15.5].any()
    assert head_circumference_cm(head, (2.5, 2.5, 2.5)) == pytest.approx(2 * np.pi * 15 * 0.25, rel=0.05)


def test_head_circumference_of_a_disc_and_of_an_ellipse():
    axes = np.mgrid[:100, :100] - 49.5
    disc = (axes[0] ** 2 + axes[1] ** 2) <= 40**2
    # A 2 mm grid: diameter 80 voxels = 160 mm, circumference pi * 16 cm.
    assert head_circumference_cm(disc, (2.0, 2.0, 2.0)) == pytest.approx(np.pi * 16, rel=0.01)
    ellipse = (axes[0] / 40) ** 2 + (axes[1] / 20) ** 2 <= 1
    volume = np.stack([ellipse & False, ellipse, disc & (axes[0] ** 2 < 100)], axis=-1)
    # The widest axial section (the ellipse) is measured; Ramanujan's perimeter of a = 8, b = 4 cm.
    assert head_circumference_cm(volume, (2.0, 2.0, 1.0)) == pytest.approx(38.75, rel=0.01)
    with pytest.raises(ValueError, match="non-empty"):
        head_circumference_cm(np.zeros((4, 4, 4)), (1.0, 1.0, 1.0))
