"""DDM+GG, the INR's 2D baseline, on a tiny synthetic dHCP cohort: training and resume, evaluation
on the INR's pairs with its metrics, the tuning sweep on training pairs, the age guidance's sign,
shapes and dtypes, and bad input."""

import contextlib
import csv
import io
import json
import subprocess

import pytest
import torch

from brainkernels.cli import main
from brainkernels.data.layouts.dhcp import read_dhcp
from brainkernels.data.synth.cohort import write_cohort
from brainkernels.errors import BrainkernelsError
from brainkernels.inr import evaluate as inr_evaluate
from brainkernels.inr.baseline import (
    BASELINE,
    DDMGGConfig,
    SlicePairs,
    age_log_likelihood_gradient,
    evaluate,
    from_signal,
    load_trained,
    predict,
    to_signal,
    train,
    training_pairs,
)
from brainkernels.inr.evaluate import COPY
from brainkernels.inr.footprint import PAPER_DDMGG, ddmgg_footprints, ddmgg_parameter_counts, inr_2d_footprints
from brainkernels.inr.train import split_test_subjects

SHAPE = 16
TINY = dict(channels=4, channel_mult=(1, 2), blocks=1, regressor_channels=4, regressor_channel_mult=(1, 2),
            regressor_blocks=1, batch_size=2, checkpoint_every=100, workers=0, device="cpu")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("dhcp")
    write_cohort("dhcp", root, subjects=8, shape=SHAPE, seed=2, rescanned=0.8)
    return root


@pytest.fixture(scope="module")
def run(cohort, tmp_path_factory):
    return train(cohort, tmp_path_factory.mktemp("runs") / "ddmgg", DDMGGConfig(steps=3, **TINY), quiet=True)


def brainkernels(*argv, cwd):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        returncode = main([str(arg) for arg in argv])
    return subprocess.CompletedProcess(argv, returncode, out.getvalue(), err.getvalue())


def _rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_command_line_trains_resumes_and_evaluates_the_inr_pairs(cohort, tmp_path):
    options = ["--channels", 4, "--channel-mult", "1,2", "--regressor-channels", 4, "--regressor-channel-mult", "1,2",
               "--batch-size", 2, "--workers", 0, "--device", "cpu", "--quiet"]
    trained = brainkernels("inr", "baseline", "train", "--data", cohort, "--out", "run", "--steps", 2, *options,
                           cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "trained DDM+GG (2 steps)" in trained.stdout
    resumed = brainkernels("inr", "baseline", "train", "--data", cohort, "--out", "run", "--steps", 4, "--resume",
                           *options, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2, 4]  # logged at the end of each part
    assert (tmp_path / "run/config.toml").is_file() and (tmp_path / "run/grid.json").is_file()

    evaluated = brainkernels("inr", "baseline", "evaluate", "--model", "run", "--data", cohort, "--noise-steps", 9,
                             "--stride", 4, "--guidance-scale", 100, "--workers", 0, "--quiet", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert BASELINE in evaluated.stdout and COPY in evaluated.stdout
    pairs = _rows(tmp_path / "run/evaluation/pairs.csv")
    held_out = inr_evaluate.test_pairs(cohort, 0)
    assert [row["subject"] for row in pairs] == [first.subject_id for first, _ in held_out]  # the INR's pairs
    assert pairs[0]["noise_steps"] == "9" and pairs[0]["stride"] == "4"
    assert {"psnr", "ssim", "mae", "hc_true_cm", "hc_predicted_cm", "psnr_copy"} <= set(pairs[0])
    assert [row["variant"] for row in _rows(tmp_path / "run/evaluation/summary.csv")] == [BASELINE, COPY]
    assert (tmp_path / "run/evaluation/head_circumference.png").is_file()


def test_tuning_uses_training_pairs_only(cohort, run, tmp_path):
    result = brainkernels("inr", "baseline", "tune", "--model", run, "--data", cohort, "--noise-steps", "3,5",
                          "--guidance-scale", "0,10", "--pairs", 2, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = _rows(run / "tuning.csv")
    assert sorted((int(row["noise_steps"]), float(row["guidance_scale"])) for row in rows) == [
        (3, 0.0), (3, 10.0), (5, 0.0), (5, 10.0)]
    assert all(row["pairs"] == "2" for row in rows)
    assert len({row["psnr_copy"] for row in rows}) == 1 and "copy input on these pairs: PSNR" in result.stdout
    _, held_out = split_test_subjects(read_dhcp(cohort), 0)
    assert not {first.subject_id for first, _ in training_pairs(cohort, 0)} & set(held_out)
    psnrs = [float(row["psnr"]) for row in rows]
    assert psnrs == sorted(psnrs, reverse=True)


def test_python_api_evaluate_matches_for_a_fixed_seed(cohort, run, tmp_path):
    first = evaluate(run, cohort, tmp_path / "a", noise_steps=4, guidance_scale=10.0, seed=3, quiet=True)
    again = evaluate(run, cohort, tmp_path / "b", noise_steps=4, guidance_scale=10.0, seed=3, quiet=True)
    assert first[BASELINE]["psnr"] == again[BASELINE]["psnr"]
    assert set(first) == {BASELINE, COPY}


def test_guidance_gradient_moves_the_regressors_prediction_toward_the_target(run):
    model = load_trained(run).model
    torch.manual_seed(0)
    with torch.no_grad():  # a random regressor: the trained one of 3 steps is nearly constant
        for parameter in model.regressor.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    x, t = torch.randn(2, 1, SHAPE, SHAPE), torch.tensor([10, 500])
    now = model.age(x, t)
    for offset in (-1.0, 1.0):
        target = float(now.mean()) + offset
        step = age_log_likelihood_gradient(model, target)(x, t)
        assert step.shape == x.shape and step.dtype == torch.float32 and not step.requires_grad
        moved = model.age(x + 1e-3 * step / step.abs().max(), t)
        assert torch.all((moved - now) * offset > 0)


def test_prediction_shape_dtype_and_range(run, cohort):
    trained = load_trained(run)
    image = torch.rand(SHAPE, SHAPE)
    predicted = predict(trained, image, 40.0, noise_steps=5, guidance_scale=50.0)
    assert predicted.shape == (SHAPE, SHAPE) and predicted.dtype == torch.float32
    assert 0 <= predicted.min() and predicted.max() <= 1


def test_signals_pad_with_background_and_crop_back():
    image = torch.rand(2, 12, 20)
    signal = to_signal(image, 8)
    assert signal.shape == (2, 1, 16, 24) and torch.all(signal[:, :, 12:] == -1) and torch.all(signal[..., 20:] == -1)
    torch.testing.assert_close(from_signal(signal, (12, 20)), image)
    assert to_signal(torch.rand(8, 8), 8).shape == (1, 1, 8, 8)


def test_condition_is_another_session_when_the_baby_has_one(cohort, tmp_path):
    scans, _ = split_test_subjects(read_dhcp(cohort), 0)

    class Entry:  # the slice's index as its image, to see which scan was drawn
        def __init__(self, index):
            self.index = index

        def tensor(self, name):
            return torch.full((SHAPE, SHAPE), self.index / 100)

    pairs = SlicePairs([Entry(i) for i in range(len(scans))], scans, 8, flip=False)
    for index, scan in enumerate(scans):
        sessions = [i for i, other in enumerate(scans) if other.subject_id == scan.subject_id]
        for _ in range(3):
            item = pairs[index]
            drawn = round(float((item["condition"][0, 0, 0] + 1) / 2) * 100)
            assert drawn in ([i for i in sessions if i != index] or [index])
            assert item["target"].shape == (1, SHAPE, SHAPE)
            assert item["age"] == torch.tensor(scan.normalised_age, dtype=torch.float32)


@pytest.mark.parametrize(("noise_steps", "scale", "message"), [
    (0, 1.0, "--noise-steps must be between 1 and the 1000"),
    (1001, 1.0, "--noise-steps must be between 1 and the 1000"),
    (5, -1.0, "--guidance-scale must be a finite number, 0 or more"),
    (5, float("nan"), "--guidance-scale must be a finite number, 0 or more"),
])
def test_bad_sampling_settings_are_refused(run, noise_steps, scale, message):
    with pytest.raises(BrainkernelsError, match=message):
        predict(load_trained(run), torch.rand(SHAPE, SHAPE), 40.0, noise_steps=noise_steps, guidance_scale=scale)


def test_bad_input_on_the_command_line(cohort, run, tmp_path):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit:  # argparse's refusal
        main(["inr", "baseline", "tune", "--model", str(run), "--data", str(cohort), "--noise-steps", "abc",
              "--guidance-scale", "1"])
    assert exit.value.code == 2 and "--noise-steps takes finite numbers" in err.getvalue()
    result = brainkernels("inr", "baseline", "evaluate", "--model", tmp_path / "none", "--data", cohort, cwd=tmp_path)
    assert result.returncode != 0 and "not a run folder" in result.stderr
    with pytest.raises(ValueError, match="key 'channel_mult' must be positive ints"):
        DDMGGConfig(channel_mult=())
    with pytest.raises(BrainkernelsError, match="age 70 weeks is not a postmenstrual age"):
        predict(load_trained(run), torch.rand(SHAPE, SHAPE), 70.0, noise_steps=2, guidance_scale=1.0)


def test_an_inr_run_is_not_a_baseline_run(cohort, tmp_path):
    from brainkernels.inr.train import INRConfig
    from brainkernels.inr.train import train as train_inr

    inr = train_inr(cohort, tmp_path / "inr", INRConfig(dims=2, steps=1, width=8, depth=2, latent_size=4,
                                                       batch_size=2, workers=0, device="cpu"), quiet=True)
    with pytest.raises(BrainkernelsError, match="not a DDM\\+GG baseline run"):
        load_trained(inr)


def test_paper_size_parameter_counts_are_the_papers():
    counts = ddmgg_parameter_counts(DDMGGConfig(**PAPER_DDMGG))
    assert counts["denoiser"] == pytest.approx(113_669_762, rel=0.03)  # Table 2 of the paper
    assert counts["regressor"] == pytest.approx(86_786_817, rel=0.03)


def test_footprints_on_the_meta_device_equal_those_on_the_cpu():
    settings = DDMGGConfig(**{key: value for key, value in TINY.items() if key not in ("workers", "device")})
    meta, cpu = (ddmgg_footprints(settings, (16, 24), 2, device) for device in ("meta", "cpu"))
    assert [row.peak_bytes for row in meta] == [row.peak_bytes for row in cpu]
    assert all(row.peak_bytes > 0 for row in meta)
    inr_meta, inr_cpu = (inr_2d_footprints((16, 16), device) for device in ("meta", "cpu"))
    assert [row.peak_bytes for row in inr_meta] == [row.peak_bytes for row in inr_cpu]
