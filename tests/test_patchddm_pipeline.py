"""PatchDDM's diffusion, data, metrics and its train -> segment -> evaluate pipeline on a small
synthetic BraTS-layout cohort, from the command line and the Python API, in all three modes."""

import dataclasses
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from brainkernels.data.cache import PreparedCache
from brainkernels.data.layouts.brats import read_brats
from brainkernels.data.sampling import center_weighted_patch_starts
from brainkernels.data.synth.cohort import write_cohort
from brainkernels.errors import BrainkernelsError
from brainkernels.metrics.segmentation import dice, hausdorff95
from brainkernels.patchddm import evaluate as evaluate_module
from brainkernels.patchddm.data import (
    TrainingSamples,
    coordinate_channels,
    half_resolution,
    network_input,
    pad_to_multiple,
    preparation_request,
    prepare_subject,
)
from brainkernels.patchddm.diffusion import Diffusion, signal_to_probability
from brainkernels.patchddm.evaluate import evaluate, segment
from brainkernels.patchddm.train import PatchDDMConfig, load_trained, split_subjects, train
from brainkernels.runtime import config

SHAPE = 24
SMALL = dict(channels=4, channel_mult=(1, 2, 2), patch=12, steps=2, checkpoint_every=2, device="cpu", lr=1e-3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats")
    write_cohort("brats", root, subjects=10, shape=SHAPE, seed=4)
    return root


def brainkernels(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "brainkernels", *argv], capture_output=True, text=True, cwd=cwd)


def test_ddim_with_the_true_noise_recovers_the_mask():
    diffusion = Diffusion()
    x0 = (torch.rand(1, 1, 4, 4, 4) > 0.5).float()
    noise = torch.randn_like(x0)
    x_start = diffusion.add_noise(x0, torch.tensor([999]), noise)

    def oracle(x, t):  # the noise that explains x_t given the true x_0
        abar = diffusion.alphas_cumprod[t].float().reshape(-1, 1, 1, 1, 1)
        return (x - abar.sqrt() * x0) / (1 - abar).sqrt()

    for steps in (1, 7, 50):
        torch.testing.assert_close(diffusion.ddim_sample(oracle, x_start, steps), x0, atol=1e-4, rtol=0)


def test_respacing_visits_distinct_descending_timesteps_and_checks_the_count():
    diffusion = Diffusion(1000)
    timesteps = diffusion.respaced(20)
    assert timesteps[0] == 999 and timesteps[-1] == 0 and len(set(timesteps)) == 20
    assert timesteps == sorted(timesteps, reverse=True)
    for bad in (0, 1001):
        with pytest.raises(BrainkernelsError, match="--steps"):
            diffusion.respaced(bad)


def test_noising_reaches_pure_noise_and_probabilities_map_back():
    diffusion = Diffusion()
    x0 = torch.ones(200_000)
    noised = diffusion.add_noise(x0, torch.tensor([999]), torch.randn_like(x0))
    assert abs(noised.mean()) < 0.02 and abs(noised.std() - 1) < 0.02
    assert torch.equal(signal_to_probability(torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0])),
                       torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]))


def test_padding_to_a_multiple_crops_back_exactly():
    volume = torch.randn(2, 5, 8, 13)
    padded, crop = pad_to_multiple(volume, 8)
    assert padded.shape == (2, 8, 8, 16)
    assert torch.equal(padded[(slice(None), *crop)], volume)
    coordinates = coordinate_channels((3, 4, 5))
    assert coordinates[0, 0].eq(-1).all() and coordinates[0, -1].eq(1).all() and coordinates[2, :, :, -1].eq(1).all()


@pytest.mark.parametrize("mode, channels, side", [("patch", 7, 12), ("full", 4, 24), ("half", 4, 12)])
def test_training_samples_of_each_mode_equal_the_uncached_preparation(cohort, tmp_path, mode, channels, side):
    subject = split_subjects(read_brats(cohort), 0)[0][1]
    multiple = 8 if mode == "half" else 4
    entry = PreparedCache(tmp_path).get(preparation_request(subject, multiple, with_mask=True))
    torch.manual_seed(3)
    sample = TrainingSamples([entry], mode, 12)[0]
    assert sample["condition"].shape == (channels, side, side, side)
    assert sample["mask"].shape == (1, side, side, side)
    assert set(sample["mask"].unique().tolist()) <= {0.0, 1.0}
    # The path without the cache: load, normalise, pad, add the coordinates, then cut.
    prepared = prepare_subject(subject, multiple, with_mask=True)
    condition, mask = network_input(prepared.image, mode), prepared.mask
    if mode == "half":
        mask = (half_resolution(mask) > 0.5).float()
    elif mode == "patch":
        torch.manual_seed(3)
        start = center_weighted_patch_starts(condition.shape[1:], 12, 1)[0].tolist()
        window = (slice(None), *(slice(first, first + 12) for first in start))
        condition, mask = condition[window], mask[window]
    assert torch.equal(sample["condition"], condition) and torch.equal(sample["mask"], mask)


def _random_masks(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(4, 12, size=3))
    first, second = rng.random(shape) > rng.uniform(0.3, 0.9), rng.random(shape) > rng.uniform(0.3, 0.9)
    return first, second


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), spacing=st.tuples(*[st.sampled_from([0.5, 1.0, 2.0])] * 3))
def test_dice_and_hd95_equal_monai(seed, spacing):
    from monai.metrics import compute_dice, compute_hausdorff_distance

    first, second = _random_masks(seed)
    as_tensor = [torch.from_numpy(mask)[None, None].float() for mask in (first, second)]
    assert dice(first, second) == pytest.approx(compute_dice(*as_tensor).item(), abs=1e-6)
    expected = compute_hausdorff_distance(*as_tensor, percentile=95, spacing=list(spacing)).item()
    assert hausdorff95(first, second, spacing) == pytest.approx(expected, abs=1e-4)


def test_metrics_of_empty_masks():
    empty, full = np.zeros((4, 4, 4), bool), np.ones((4, 4, 4), bool)
    assert dice(empty, empty) == 1 and dice(empty, full) == 0
    assert hausdorff95(empty, empty) == 0 and np.isnan(hausdorff95(empty, full))
    with pytest.raises(ValueError, match="shape"):
        dice(empty, np.zeros((4, 4, 5), bool))


def test_command_line_train_segment_evaluate(cohort, tmp_path):
    run = tmp_path / "run"
    trained = brainkernels("patchddm", "train", "--data", str(cohort), "--out", str(run), "--channels", "4",
                           "--channel-mult", "1,2,2", "--patch", "12", "--steps", "2", "--checkpoint-every", "2",
                           "--device", "cpu", "--quiet", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    subject = sorted(p for p in cohort.iterdir() if p.is_dir())[0]
    segmented = brainkernels("patchddm", "segment", "--model", str(run), "--input", str(subject), "--steps", "2",
                             "--ensemble", "2", "--out", str(tmp_path / "seg"), "--quiet", cwd=tmp_path)
    assert segmented.returncode == 0, segmented.stderr
    source = nib.as_closest_canonical(nib.load(subject / f"{subject.name}_flair.nii.gz"))
    for name in ("mask", "probability", "variance"):
        written = nib.load(tmp_path / "seg" / f"{subject.name}_{name}.nii.gz")
        assert written.shape == (SHAPE,) * 3
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    assert (tmp_path / "seg" / f"{subject.name}_uncertainty.png").stat().st_size > 10_000
    evaluated = brainkernels("patchddm", "evaluate", "--model", str(run), "--data", str(cohort), "--steps", "1,2",
                             "--ensemble", "1,2", "--quiet", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.count("±") == 8  # 2 steps x 2 sizes, Dice and HD95
    for output in ("scores.csv", "summary.csv", "dice_vs_ensemble.png"):
        assert (run / "evaluation" / output).is_file()
    everyone = brainkernels("patchddm", "evaluate", "--model", str(run), "--data", str(cohort), "--steps", "1",
                            "--ensemble", "1", "--subjects", "all", "--out", str(tmp_path / "all"), "--quiet",
                            cwd=tmp_path)
    assert everyone.returncode == 0, everyone.stderr
    subjects = {p.name for p in cohort.iterdir() if p.is_dir()}
    assert set(pd.read_csv(tmp_path / "all" / "scores.csv")["subject"]) == subjects


@pytest.mark.parametrize("mode", ["full", "half"])
def test_python_api_baselines(cohort, tmp_path, mode):
    settings = PatchDDMConfig(mode=mode, **SMALL)
    run = train(cohort, tmp_path / mode, settings, quiet=True)
    model, loaded = load_trained(run)
    assert loaded == settings and model.size_multiple == 4
    summary = evaluate(run, cohort, tmp_path / "evaluation", steps=[2], ensemble=[1, 2], quiet=True)
    assert [row["ensemble"] for row in summary] == [1, 2]
    assert all(0 <= row["dice_mean"] <= 1 for row in summary)
    written = segment(run, cohort, tmp_path / "seg", steps=1, ensemble=1, precision="bf16", quiet=True)
    assert len(written) == 10 and all(path.is_file() for path in written)


def test_evaluation_measures_hd95_in_millimetres_of_the_subjects_grid():
    """The synthetic 32^3 cohort has 7 mm voxels: a mask one voxel off is 7 mm off (HD95 was in voxels)."""
    truth = torch.zeros(8, 8, 8, dtype=torch.bool)
    truth[2:5, 2:5, 2:5] = True
    shifted = torch.roll(truth, 1, dims=0).float()
    segmentation = evaluate_module.Segmentation(shifted[None])
    (row,) = evaluate_module._scores(segmentation, truth, [1], (7.0, 1.0, 1.0))
    assert row["hd95_mm"] == pytest.approx(7.0)


def test_summary_gives_hd95_quartiles_and_says_why_one_is_missing():
    """HD95 is skewed, so the summary (and its figure) has quartiles beside mean and std; subjects
    without a distance (an empty mask) are left out of them, and a group with none says why."""
    distances = [1.0, 2.0, 30.0, float("nan")]
    rows = [{"subject": i, "steps": 20, "ensemble": 1, "dice": 0.5, "hd95_mm": d} for i, d in enumerate(distances)]
    rows += [{"subject": 0, "steps": 20, "ensemble": 3, "dice": 0.0, "hd95_mm": float("nan")}]
    measured, missing = evaluate_module._summary(rows)
    assert [measured[f"hd95_{name}_mm"] for name in ("q25", "median", "q75")] == [1.5, 2.0, 16.0]
    assert measured["hd95_mean_mm"] == pytest.approx(11.0)
    assert "no subject" in str(missing["hd95_median_mm"])
    evaluate_module._plot([measured, missing], "quartiles")


def test_recomputation_changes_the_memory_not_the_training(cohort, tmp_path):
    """A FullRes run with recompute=all ends with the same weights as one that stores everything."""
    weights = {}
    for recompute in ("none", "all"):
        run = train(cohort, tmp_path / recompute, PatchDDMConfig(mode="full", recompute=recompute, **SMALL), quiet=True)
        model, settings = load_trained(run)
        assert settings.recompute == recompute
        weights[recompute] = model.state_dict()
    for name, value in weights["none"].items():
        torch.testing.assert_close(weights["all"][name], value, rtol=0, atol=0, msg=name)


def test_bad_input_gets_clear_errors(cohort, tmp_path):
    with pytest.raises(ValueError, match="'patch' must be a positive multiple of 4"):
        PatchDDMConfig(**{**SMALL, "patch": 10})
    for decay in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="'weight_decay' must be a finite number of at least 0"):
            PatchDDMConfig(**SMALL, weight_decay=decay)
    run = train(cohort, tmp_path / "run", PatchDDMConfig(**SMALL), quiet=True)
    with pytest.raises(BrainkernelsError, match="--ensemble"):
        segment(run, cohort, tmp_path / "seg", steps=2, ensemble=0, quiet=True)
    with pytest.raises(BrainkernelsError, match="--steps"):
        segment(run, cohort, tmp_path / "seg", steps=1001, ensemble=1, quiet=True)
    broken = tmp_path / "broken" / "BraTS20_Training_001"
    broken.mkdir(parents=True)
    source = sorted(p for p in cohort.iterdir() if p.is_dir())[0]
    for modality in ("t1", "t1ce", "t2"):
        (broken / f"{broken.name}_{modality}.nii.gz").write_bytes(
            (source / f"{source.name}_{modality}.nii.gz").read_bytes())
    result = brainkernels("patchddm", "segment", "--model", str(run), "--input", str(broken), "--out",
                          str(tmp_path / "seg"), "--quiet", cwd=tmp_path)
    assert result.returncode == 2 and "flair" in result.stderr
    seg = nib.load(source / f"{source.name}_seg.nii.gz")
    labels = np.asarray(seg.dataobj).copy()
    labels[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(labels, seg.affine), broken / f"{broken.name}_seg.nii.gz")
    (broken / f"{broken.name}_flair.nii.gz").write_bytes((source / f"{source.name}_flair.nii.gz").read_bytes())
    result = brainkernels("patchddm", "train", "--data", str(broken.parent), "--out", str(tmp_path / "bad"),
                          "--channels", "4", "--channel-mult", "1,2,2", "--patch", "12", "--quiet", cwd=tmp_path)
    assert result.returncode == 2 and "3" in result.stderr


def test_resume_from_the_command_line_keeps_the_runs_settings(cohort, tmp_path):
    # The run's network is not the default one: --resume alone must not compare it with the defaults.
    train(cohort, tmp_path / "run", PatchDDMConfig(**SMALL), quiet=True)
    result = brainkernels("patchddm", "train", "--data", str(cohort), "--out", "run", "--resume", "--steps", "3",
                          "--workers", "0", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_trained(tmp_path / "run")[1] == PatchDDMConfig(**{**SMALL, "steps": 3, "workers": 0})


@pytest.mark.parametrize("preset", ["paper", "small"])
def test_each_preset_loads_and_trains(cohort, tmp_path, preset):
    assert preset in config.preset_names(PatchDDMConfig)
    settings = config.load_config(PatchDDMConfig, preset)
    assert settings != PatchDDMConfig()  # the preset changed something
    tiny = dataclasses.replace(settings, steps=1, device="cpu", workers=0)
    if preset == "paper":
        # The paper's 128^3 patches exceed the tiny cohort (padded to 64^3 for its seven levels), and
        # fp16 convolutions have no fast CPU kernels (one step: 11 minutes); its network trains in fp32.
        tiny = dataclasses.replace(tiny, patch=64, precision="fp32")
    run = train(cohort, tmp_path / preset, tiny, quiet=True)
    assert load_trained(run)[1] == tiny
