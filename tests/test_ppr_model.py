"""PPR network: the dense (fully convolutional) rewrite equals the paper's patchwise evaluation."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from brainkernels.memory import measure_peak
from brainkernels.ops import extract_patches3d
from brainkernels.ppr.infer import anomaly_map, displacement_map, normalised_positions, predict_dense, predict_patchwise
from brainkernels.ppr.model import MAX_PATCH, MIN_PATCH, PPRNet


def trained_looking(model: PPRNet) -> PPRNet:
    """Untrained spectral-normalised weights give tiny outputs; scale the last layer so errors show."""
    with torch.no_grad():
        model.out.weight.mul_(50)
    return model.eval()


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("m", [1, 4])
@pytest.mark.parametrize("patch", [19, 24, 31, 32])
def test_dense_equals_patchwise_at_random_and_border_voxels(m, patch, layout):
    torch.manual_seed(m * 100 + patch)
    model = trained_looking(PPRNet(m=m, patch=patch))
    volume = torch.randn(1, 13, 17, 11)
    dense = predict_dense(model, volume, tile=8, padding_value=-1.0, layout=layout)
    corners = torch.tensor([[0, 0, 0], [12, 16, 10], [0, 16, 0], [12, 0, 10], [6, 8, 5]])
    centers = torch.cat([corners, torch.stack([torch.randint(0, n, (20,)) for n in (13, 17, 11)], dim=1)])
    with torch.no_grad():
        patchwise = model(extract_patches3d(volume, centers, patch, -1.0))
    torch.testing.assert_close(dense[:, centers[:, 0], centers[:, 1], centers[:, 2]].T, patchwise,
                               rtol=1e-5, atol=1e-6)


@settings(max_examples=8, deadline=None)
@given(shape=st.tuples(*[st.integers(1, 12)] * 3), tile=st.integers(1, 14), channels=st.integers(1, 2))
def test_anomaly_maps_agree_for_any_shape_and_tile(shape, tile, channels):
    torch.manual_seed(sum(shape) + tile)
    model = trained_looking(PPRNet(m=1, patch=19, channels=channels))
    volume = torch.rand(channels, *shape)
    dense = anomaly_map(model, volume, mode="dense", tile=tile)
    patchwise = anomaly_map(model, volume, mode="patchwise", chunk=97)
    assert dense.shape == shape
    torch.testing.assert_close(dense, patchwise, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:precision 'bfloat16' on a CPU without native bfloat16")
@pytest.mark.parametrize("patch", [19, 20])  # both stem kernels (4 and 3)
def test_bfloat16_dense_map_is_within_twice_pytorchs_bfloat16_error(patch):
    """Against float64: the bfloat16 dense pass (channels-last, pooling as sums) errs at most twice
    as much as PyTorch's own bfloat16 autocast of the paper's patchwise evaluation."""
    torch.manual_seed(patch)
    model = trained_looking(PPRNet(m=4, patch=patch))
    volume = torch.rand(1, 7, 8, 9)
    exact = anomaly_map(model.double(), volume.double(), mode="patchwise")
    model.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pytorch = anomaly_map(model, volume, mode="patchwise").double()
    ours = anomaly_map(model, volume, precision="bfloat16").double()
    assert not torch.equal(ours, anomaly_map(model, volume, precision="float32").double())  # bf16 did run
    pytorch_error = (pytorch - exact).abs().max().item()
    assert 0 < (ours - exact).abs().max().item() <= 2 * pytorch_error


def test_precision_auto_is_bfloat16_only_on_a_cpu_that_has_it():
    from brainkernels.ppr.infer import native_bfloat16, resolve_precision

    expected = torch.bfloat16 if native_bfloat16() else torch.float32
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("auto", torch.device("meta")) == torch.float32
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16; got 'half'"):
        anomaly_map(PPRNet(m=1, patch=19), torch.zeros(1, 4, 4, 4), precision="half")


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_asked_for_on_a_cpu_that_emulates_it_warns(monkeypatch, native):
    from brainkernels.ppr import infer

    monkeypatch.setattr(infer, "native_bfloat16", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert infer.resolve_precision("bfloat16", torch.device("cpu")) == torch.bfloat16
        assert infer.resolve_precision("bfloat16", torch.device("meta")) == torch.bfloat16
        assert infer.resolve_precision("float32", torch.device("cpu")) == torch.float32
    messages = [str(w.message) for w in caught]
    assert messages == ([] if native else ["precision 'bfloat16' on a CPU without native bfloat16 (AVX512-BF16 or "
                                           "AMX): it is emulated and runs many times slower than float32 (precision "
                                           "'auto' picks float32 here)"])


def test_anomaly_map_is_the_position_error():
    torch.manual_seed(0)
    model = trained_looking(PPRNet(m=2, patch=19))
    volume = torch.rand(1, 6, 7, 8)
    predicted = predict_dense(model, volume)
    centers = torch.tensor([[5, 0, 3]])
    expected = torch.linalg.vector_norm(predicted[:, 5, 0, 3] - normalised_positions(centers, (6, 7, 8))[0])
    assert anomaly_map(model, volume)[5, 0, 3] == pytest.approx(expected.item(), rel=1e-6)


def test_strided_patchwise_is_interpolated_to_the_full_grid():
    model = trained_looking(PPRNet(m=1, patch=19))
    volume = torch.rand(1, 9, 9, 9)
    assert predict_patchwise(model, volume, stride=4).shape == (3, 3, 3, 3)
    coarse = anomaly_map(model, volume, mode="patchwise", stride=4)
    full = anomaly_map(model, volume)
    assert coarse.shape == (9, 9, 9)
    torch.testing.assert_close(coarse[::4, ::4, ::4], full[::4, ::4, ::4], rtol=1e-5, atol=1e-6)


def test_the_displacement_is_the_prediction_minus_the_position_and_its_length_the_error():
    model = trained_looking(PPRNet(m=1, patch=19))
    volume = torch.rand(1, 7, 8, 9)
    displacement = displacement_map(model, volume, tile=5)
    assert displacement.shape == (3, 7, 8, 9)
    voxel = torch.tensor([[5, 0, 3]])
    torch.testing.assert_close(displacement[:, 5, 0, 3], predict_dense(model, volume)[:, 5, 0, 3]
                               - normalised_positions(voxel, (7, 8, 9))[0])
    torch.testing.assert_close(displacement, displacement_map(model, volume, mode="patchwise", chunk=50),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(displacement.norm(dim=0), anomaly_map(model, volume), rtol=1e-5, atol=1e-6)
    coarse = displacement_map(model, volume, mode="patchwise", stride=3)
    assert coarse.shape == (3, 7, 8, 9)
    # 3 divides none of the sizes minus one: the evaluated voxels still keep their values, and past the last
    # one (index 6) each axis repeats it.
    torch.testing.assert_close(coarse[:, ::3, ::3, ::3], displacement[:, ::3, ::3, ::3], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(coarse[:, :, 7], coarse[:, :, 6])
    torch.testing.assert_close(anomaly_map(model, volume, mode="patchwise", stride=3)[::3, ::3, ::3],
                               anomaly_map(model, volume)[::3, ::3, ::3], rtol=1e-5, atol=1e-6)


def test_dense_memory_does_not_grow_with_the_volume_beyond_its_output():
    """On the meta device (exact, no memory needed): the same tile costs the same whatever the volume."""
    model = PPRNet(m=16).to("meta").eval()
    extra = {}
    for side in (64, 128):
        volume = torch.empty(1, side, side, side, device="meta")
        peak = measure_peak(lambda: predict_dense(model, volume, tile=32), device="meta").peak_bytes
        extra[side] = peak - 3 * side**3 * 4  # minus the (3, D, H, W) output
    assert extra[64] == extra[128] > 0


def test_untrained_network_predicts_near_the_volume_centre():
    # Untrained spectral-normalised layers give tiny outputs, so the output bias is the prediction.
    torch.manual_seed(0)
    predicted = PPRNet(m=2, patch=19)(torch.rand(4, 1, 19, 19, 19))
    torch.testing.assert_close(predicted, torch.full_like(predicted, 0.5), atol=0.1, rtol=0)


@pytest.mark.parametrize("patch", [MIN_PATCH - 1, MAX_PATCH + 1])
def test_patch_size_out_of_range(patch):
    with pytest.raises(ValueError, match=f"patch must be between {MIN_PATCH} and {MAX_PATCH}"):
        PPRNet(patch=patch)


def test_bad_shapes_are_named():
    model = PPRNet(m=1, patch=19)
    with pytest.raises(ValueError, match=r"patches must have shape \(N, 1, 19, 19, 19\)"):
        model(torch.zeros(2, 1, 18, 19, 19))
    with pytest.raises(ValueError, match=r"volume must have shape \(1, D, H, W\)"):
        anomaly_map(model, torch.zeros(2, 8, 8, 8))
    with pytest.raises(ValueError, match="mode must be 'dense' or 'patchwise'"):
        anomaly_map(model, torch.zeros(1, 8, 8, 8), mode="fast")


def test_padding_matches_the_patch_convention():
    """The dense pass pads the volume border exactly like extract_patches3d does."""
    model = trained_looking(PPRNet(m=1, patch=20))
    volume = torch.rand(1, 5, 5, 5)
    padded = F.pad(volume, (10, 9) * 3, value=0.25)
    with torch.no_grad():
        direct = model.forward_dense(padded[None])[0]
    torch.testing.assert_close(predict_dense(model, volume, padding_value=0.25), direct)


@pytest.mark.parametrize("patch", [19, 20])
def test_near_foreground_is_the_patch_cube_maximum(patch):
    from brainkernels.ppr.data import near_foreground

    mask = torch.rand(20, 21, 22, generator=torch.Generator().manual_seed(patch)) > 0.995
    half = patch // 2
    expected = F.max_pool3d(F.pad(mask[None, None].float(), (half, patch - 1 - half) * 3), patch, stride=1)[0, 0] > 0
    assert torch.equal(near_foreground(mask, patch), expected)
    centers = torch.tensor([[0, 0, 0], [10, 10, 10], [19, 20, 21]])
    holds = extract_patches3d(mask[None].float(), centers, patch).flatten(1).amax(1) > 0
    assert torch.equal(near_foreground(mask, patch)[centers[:, 0], centers[:, 1], centers[:, 2]], holds)
