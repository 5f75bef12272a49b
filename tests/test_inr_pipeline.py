"""INR end to end on a tiny synthetic dHCP cohort: train -> predict -> atlas -> evaluate from the
command line (2D) and the Python API (3D), and the bad inputs of the issue."""

import contextlib
import dataclasses
import io
import math
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest
import torch

from brainkernels.cli import main
from brainkernels.data.cache import PreparedCache
from brainkernels.data.layouts.dhcp import read_dhcp, scans_by_subject
from brainkernels.data.synth.cohort import write_cohort
from brainkernels.data.volume import load_nifti
from brainkernels.errors import BrainkernelsError
from brainkernels.inr import evaluate as inr_evaluate
from brainkernels.inr.data import SampledVoxels, preparation_request, prepare_input
from brainkernels.inr.evaluate import COPY, ablation, evaluate, load_pair, summarise
from brainkernels.inr.predict import atlas, predict
from brainkernels.inr.train import INRConfig, load_trained, model_grid, split_test_subjects, train
from brainkernels.metrics.image import psnr
from brainkernels.ops.coordinate_mlp import grid_coordinates
from brainkernels.runtime import config

SHAPE = 16
TINY = dict(width=16, depth=3, latent_size=8, batch_size=2, checkpoint_every=100, device="cpu")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Eight subjects, most scanned twice or three times (the dHCP's one in ten would leave
    none with two sessions in so few)."""
    root = tmp_path_factory.mktemp("dhcp")
    write_cohort("dhcp", root, subjects=8, shape=SHAPE, seed=2, rescanned=0.8)
    return root


@pytest.fixture(scope="module")
def run_3d(cohort, tmp_path_factory):
    settings = INRConfig(dims=3, steps=2, pixel_ratio=0.02, **TINY)
    return train(cohort, tmp_path_factory.mktemp("runs") / "3d", settings, quiet=True), settings


def brainkernels(*argv, cwd):
    """The command line in this process (a subprocess per command would spend most of the test
    importing torch); same parser, same error handling."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        returncode = main([str(arg) for arg in argv])
    return subprocess.CompletedProcess(argv, returncode, out.getvalue(), err.getvalue())


def first_scan(cohort):
    return scans_by_subject(read_dhcp(cohort))["SYN001"][0].t2w_path


@pytest.mark.parametrize("dims", [2, 3])
def test_cached_voxel_samples_equal_the_uncached_preparation(cohort, tmp_path, dims):
    scan = scans_by_subject(read_dhcp(cohort))["SYN002"][0]
    grid = model_grid([scan], dims)
    entry = PreparedCache(tmp_path).get(preparation_request(scan, grid))
    torch.manual_seed(7)
    item = SampledVoxels([entry], [scan], grid, [3], pixel_ratio=0.3, foreground_share=0.75)[0]
    prepared = prepare_input(load_nifti(scan.t2w_path), grid, "scan")  # the path without the cache
    voxels = math.prod(grid.model_shape)
    samples = math.ceil(0.3 * voxels)
    torch.manual_seed(7)
    head = torch.nonzero(prepared.foreground.reshape(-1))[:, 0]
    chosen = torch.cat([head[torch.randint(len(head), (round(0.75 * samples),))],
                        torch.randint(voxels, (samples - round(0.75 * samples),))])
    assert torch.equal(item["coords"], grid_coordinates(grid.model_shape)[chosen])
    assert torch.equal(item["targets"], prepared.image.reshape(-1)[chosen])
    assert item["latent_index"] == 3 and item["age"] == torch.tensor(scan.normalised_age, dtype=torch.float32)


def test_command_line_2d(cohort, tmp_path):
    run = tmp_path / "run"
    trained = brainkernels("inr", "train", "--data", cohort, "--out", run, "--dims", "2", "--steps", "3",
                           "--width", "16", "--depth", "3", "--latent-size", "8", "--batch-size", "2",
                           "--pixel-ratio", "0.2", "--device", "cpu", "--quiet", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    scan = first_scan(cohort)
    single = brainkernels("inr", "predict", "--model", run, "--input", scan, "--age-in", "32", "--age-out", "40",
                          "--out", tmp_path / "pred.nii.gz", "--fit-steps", "3", "--quiet", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    prediction = nib.load(tmp_path / "pred.nii.gz")
    assert prediction.shape == (SHAPE, SHAPE, 1)
    # The 2D model's output is the central axial slice, placed where that slice lies in the input.
    expected = nib.as_closest_canonical(nib.load(scan)).affine @ np.diag([1, 1, 1, 1.0])
    expected[:3, 3] += expected[:3, 2] * (SHAPE // 2)
    np.testing.assert_allclose(prediction.affine, expected, atol=1e-5)
    assert (tmp_path / "pred_reconstruction.nii.gz").is_file()
    sequence = brainkernels("inr", "predict", "--model", run, "--input", scan, "--age-in", "32", "--ages",
                            "28,36,44", "--out", tmp_path / "sequence", "--fit-steps", "2", "--quiet", cwd=tmp_path)
    assert sequence.returncode == 0, sequence.stderr
    assert {p.name for p in (tmp_path / "sequence").iterdir()} == {
        "reconstruction.nii.gz", "28w.nii.gz", "36w.nii.gz", "44w.nii.gz", "sequence.png"}
    mapped = brainkernels("inr", "atlas", "--model", run, "--ages", "30,40", "--out", tmp_path / "atlas", "--data",
                          cohort, cwd=tmp_path)
    assert mapped.returncode == 0, mapped.stderr
    assert (tmp_path / "atlas" / "mean_40w.nii.gz").is_file() and (tmp_path / "atlas" / "zero.png").is_file()
    assert (tmp_path / "atlas" / "head_circumference.png").is_file()
    evaluated = brainkernels("inr", "evaluate", "--model", run, "--data", cohort, "--fit-steps", "2", "--min-gap",
                             "0.5", "--quiet", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "psnr" in evaluated.stdout and "hc_sigma_cm" in evaluated.stdout
    for output in ("pairs.csv", "summary.csv", "head_circumference.png"):
        assert (run / "evaluation" / output).is_file()


def test_python_api_3d(cohort, run_3d, tmp_path):
    run, settings = run_3d
    trained = load_trained(run)
    assert trained.settings == settings and trained.grid.shape == (SHAPE,) * 3
    # SSL: one latent per training subject and one per its mirror image (flip), whole subjects held
    # out for testing, plus the global one.
    training_subjects = {scan.subject_id for scan in split_test_subjects(read_dhcp(cohort), settings.split_seed)[0]}
    assert set(trained.keys) == training_subjects | {subject + "#flip" for subject in training_subjects}
    assert trained.model.latents.num_embeddings == 2 * len(training_subjects) + 1
    results = evaluate(run, cohort, tmp_path / "evaluation", fit_steps=2, fit_voxels=64, quiet=True)
    summary = results["model"]
    assert -1 <= summary["ssim"] <= 1 and summary["psnr"] > 0 and 0 <= summary["mae"] <= 1
    # The copy-input baseline scores each pair's first scan as the prediction of its last.
    pairs = inr_evaluate.test_pairs(cohort, settings.split_seed)  # imported by name it would be collected
    copies = [psnr(first.image, last.image) for _, _, first, last in (load_pair(pair, trained.grid) for pair in pairs)]
    assert results[COPY]["psnr"] == pytest.approx(np.mean(copies), rel=1e-6)
    assert results[COPY]["psnr"] != pytest.approx(summary["psnr"], rel=1e-3)
    scan = first_scan(cohort)
    written = predict(run, scan, 30.0, [40.0], tmp_path / "out.nii.gz", fit_steps=2, quiet=True)
    image = nib.load(written[-1])
    assert image.shape == (SHAPE,) * 3
    np.testing.assert_allclose(image.affine, nib.as_closest_canonical(nib.load(scan)).affine, atol=1e-5)
    assert np.isfinite(image.get_fdata()).all()


@pytest.mark.parametrize("preset", ["paper", "small"])
def test_each_preset_loads_and_trains(cohort, tmp_path, preset):
    assert preset in config.preset_names(INRConfig)
    settings = config.load_config(INRConfig, preset, {"steps": 2, "device": "cpu", "workers": 0})
    assert settings != INRConfig(steps=2, device="cpu", workers=0)  # the preset changed something
    run = train(cohort, tmp_path / preset, settings, quiet=True)
    assert load_trained(run).settings == settings


def test_ablation_trains_and_tables_the_four_variants(cohort, tmp_path):
    settings = INRConfig(dims=2, steps=1, sgla=0.5, **TINY)
    # One variant trained apart beforehand (as beside the others with `inr train`): resumed, not redone.
    ssl = train(cohort, tmp_path / "ssl", dataclasses.replace(settings, sgla=0.0), quiet=True)
    checkpoints = {path.name: path.read_bytes() for path in (ssl / "checkpoints").iterdir()}
    # Tested on every subject scanned twice (the training cohort standing in for a new one), the
    # pairs at least the median gap apart.
    everyone = inr_evaluate.test_pairs(cohort, 0, "all")
    gap = float(np.median([last.age_weeks - first.age_weeks for first, last in everyone]))
    tested = [pair for pair in everyone if pair[1].age_weeks - pair[0].age_weeks >= gap]
    results = ablation(cohort, tmp_path, settings, fit_steps=1, test_data=cohort, min_gap=gap, resume=True,
                       quiet=True)
    assert list(results) == ["none", "sgla", "ssl", "both", COPY]
    assert {path.name: path.read_bytes() for path in (ssl / "checkpoints").iterdir()} == checkpoints
    assert load_trained(tmp_path / "sgla").settings.sgla == 0.5 and not load_trained(tmp_path / "sgla").settings.ssl
    assert load_trained(tmp_path / "ssl").settings.sgla == 0.0
    # Without SSL the table holds a latent per scan, with SSL one per subject.
    assert len(load_trained(tmp_path / "none").keys) > len(load_trained(tmp_path / "both").keys)
    table = (tmp_path / "ablation.csv").read_text().splitlines()
    assert table[0].startswith("variant,ssl,sgla,psnr") and len(table) == 6 and table[-1].startswith(f"{COPY},,,")
    assert (tmp_path / "head_circumference.png").is_file()
    assert 0 < len(tested) < len(everyone)
    assert [line.split(",")[0] for line in (tmp_path / "both" / "pairs.csv").read_text().splitlines()[1:]] == [
        first.subject_id for first, _ in tested]
    training = split_test_subjects(read_dhcp(cohort), 0)[0]
    # The training scans and the tested ones, each prepared once for the four variants.
    prepared = {scan.t2w_path for scan in training} | {scan.t2w_path for pair in tested for scan in pair}
    assert len(list((tmp_path / "cache").iterdir())) == len(prepared)


def test_test_pairs_at_least_a_gap_apart(cohort):
    everyone = inr_evaluate.test_pairs(cohort, 0, "all")
    gaps = sorted(last.age_weeks - first.age_weeks for first, last in everyone)
    apart = inr_evaluate.test_pairs(cohort, 0, "all", min_gap=gaps[1])
    assert len(apart) == len(everyone) - 1 and all(last.age_weeks - first.age_weeks >= gaps[1] for first, last in apart)
    with pytest.raises(BrainkernelsError, match=rf"--min-gap 50: none of the {len(everyone)} test pairs .*the longest "
                                                rf"gap is {gaps[-1]:.2f} weeks"):
        inr_evaluate.test_pairs(cohort, 0, "all", min_gap=50.0)


def test_atlas_head_circumference_against_the_cohort(cohort, run_3d, tmp_path):
    written = atlas(run_3d[0], [30.0, 40.0], tmp_path, data=cohort)
    assert {path.name for path in written} >= {"head_circumference.csv", "head_circumference.png"}
    rows = (tmp_path / "head_circumference.csv").read_text().splitlines()
    assert rows[0] == "age_weeks,zero_hc_cm,mean_hc_cm" and [row.split(",")[0] for row in rows[1:]] == ["30.0", "40.0"]
    grid = load_trained(run_3d[0]).grid
    decoded = load_nifti(tmp_path / "zero_40w.nii.gz").data[0]
    assert float(rows[2].split(",")[1]) == pytest.approx(inr_evaluate.head_circumference(decoded, grid))


def test_ages_outside_the_trained_range_warn(cohort, run_3d, tmp_path):
    with pytest.warns(UserWarning, match="outside the trained range 26-45 weeks"):
        atlas(run_3d[0], [50.0], tmp_path)


def test_scan_on_another_grid_is_refused(run_3d, tmp_path):
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((SHAPE + 2,) * 3, np.float32), np.eye(4)), other)
    with pytest.raises(BrainkernelsError, match=r"other.nii.gz: shape \(18, 18, 18\) differs from the model's grid"):
        predict(run_3d[0], other, 30.0, [40.0], tmp_path / "out.nii.gz", fit_steps=1, quiet=True)


def test_several_ages_need_an_output_folder(cohort, run_3d, tmp_path):
    with pytest.raises(BrainkernelsError, match="several ages are written to a folder"):
        predict(run_3d[0], first_scan(cohort), 30.0, [35.0, 40.0], tmp_path / "out.nii.gz", quiet=True)


def test_checkpoint_with_a_latent_table_of_the_wrong_size(run_3d, tmp_path):
    run = shutil.copytree(run_3d[0], tmp_path / "run")
    (checkpoint,) = (run / "checkpoints").iterdir()
    payload = torch.load(checkpoint, weights_only=True)
    payload["model"]["latents.weight"] = torch.zeros(3, 8)
    torch.save(payload, checkpoint)
    with pytest.raises(BrainkernelsError, match=r"latent table of shape \(3, 8\)"):
        load_trained(run)


def test_missing_age_in_a_sessions_table_is_named(cohort, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(cohort, broken)
    table = broken / "sub-SYN001" / "sub-SYN001_sessions.tsv"
    lines = table.read_text().splitlines()
    lines[1] = lines[1].split("\t")[0] + "\t"
    table.write_text("\n".join(lines) + "\n")
    result = brainkernels("inr", "train", "--data", broken, "--out", tmp_path / "run", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 2
    assert "sub-SYN001_sessions.tsv: scan_age on line 2 is empty" in result.stderr


def test_not_an_inr_run(tmp_path):
    with pytest.raises(BrainkernelsError, match="not a run folder"):
        load_trained(tmp_path)
    (tmp_path / "config.toml").write_text("m = 16\n")
    with pytest.raises(BrainkernelsError, match="not an INR run"):
        load_trained(tmp_path)


def test_head_circumference_correlation_needs_three_pairs():
    rows = [dict(psnr=1.0, ssim=0.5, mae=0.1, hc_true_cm=true, hc_predicted_cm=predicted)
            for true, predicted in ((30.0, 31.0), (33.0, 32.5), (35.0, 36.0))]
    assert math.isnan(summarise(rows[:2])["hc_r"])
    assert summarise(rows)["hc_r"] == pytest.approx(0.942, abs=1e-3)
