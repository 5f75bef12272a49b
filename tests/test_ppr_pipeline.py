"""PPR end to end on a small synthetic CQ500-style cohort: train -> detect -> evaluate, from the
command line and the Python API, for PPR and the autoencoder baseline."""

import dataclasses
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from brainkernels.data.cache import PreparedCache
from brainkernels.data.layouts.cq500 import read_cq500
from brainkernels.data.preprocess import equalize_ct
from brainkernels.data.synth.cohort import read_cohort, write_cohort
from brainkernels.data.synth.cq500 import finding_kinds
from brainkernels.data.volume import load_nifti, save_nifti
from brainkernels.errors import BrainkernelsError
from brainkernels.ops import extract_patches3d
from brainkernels.ppr import evaluate as ppr_evaluate
from brainkernels.ppr import healthy_reference
from brainkernels.ppr.data import PositionPatches, near_foreground, preparation_request, prepare
from brainkernels.ppr.evaluate import MAX_ERROR, VS_HEALTHY, detect, evaluate
from brainkernels.ppr.infer import normalised_positions
from brainkernels.ppr.train import NEGATIVES, PPRConfig, load_trained, train
from brainkernels.runtime import RunFolder, config

SHAPE = 32


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cq500")
    write_cohort("cq500", root, subjects=12, shape=SHAPE, seed=3)
    return root


def brainkernels(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "brainkernels", *argv], capture_output=True, text=True, cwd=cwd)


def test_cached_training_patches_equal_the_uncached_preparation(cohort, tmp_path):
    scan = sorted((cohort / "scans").iterdir())[2]
    entry = PreparedCache(tmp_path).get(preparation_request(scan, 5))
    torch.manual_seed(5)
    item = PositionPatches([entry], 5, 40)[0]
    prepared = prepare(scan)  # the path without the cache
    torch.manual_seed(5)
    centers = torch.stack([torch.randint(0, SHAPE, (40,)) for _ in range(3)], dim=1)
    assert torch.equal(item["patches"], extract_patches3d(prepared.volume.data, centers, 5))
    assert torch.equal(item["targets"], normalised_positions(centers, (SHAPE,) * 3))
    assert torch.equal(item["keep"], near_foreground(prepared.mask, 5)[centers[:, 0], centers[:, 1], centers[:, 2]])
    assert item["keep"].any() and not item["keep"].all()


def test_command_line_train_detect_evaluate(cohort, tmp_path):
    run = tmp_path / "run"
    trained = brainkernels("ppr", "train", "--data", str(cohort), "--out", str(run),
                           "--network-size", "2", "--patch", "19",
                           "--steps", "6", "--patches-per-step", "32", "--checkpoint-every", "3", "--device", "cpu",
                           "--quiet", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    scan = sorted((cohort / "scans").iterdir())[0]
    detected = brainkernels("ppr", "detect", "--model", str(run), "--input", str(scan), "--out", str(tmp_path / "maps"),
                            "--masks", str(cohort / "masks"), "--precision", "auto",
                            "--quiet", cwd=tmp_path)
    assert detected.returncode == 0, detected.stderr
    name = scan.name.removesuffix(".nii.gz")
    anomaly = nib.load(tmp_path / "maps" / f"{name}_anomaly.nii.gz")
    assert anomaly.shape == (SHAPE,) * 3
    np.testing.assert_allclose(anomaly.affine, nib.as_closest_canonical(nib.load(scan)).affine, atol=1e-5)
    assert (tmp_path / "maps" / f"{name}_anomaly.png").stat().st_size > 10_000
    evaluated = brainkernels("ppr", "evaluate", "--model", str(run), "--data", str(cohort), "--quiet", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "left hemisphere bleed" in evaluated.stdout and "vs healthy scans" in evaluated.stdout
    for output in ("scores.csv", "auroc.csv", "roc.png"):
        assert (run / "evaluation" / output).is_file()
    table = pd.read_csv(run / "evaluation" / "auroc.csv")
    assert sorted(set(table["score"])) == [MAX_ERROR, VS_HEALTHY] and len(table) == 6
    assert {"left_bleed_max_error", "left_bleed_vs_healthy"} <= set(pd.read_csv(run / "evaluation" / "scores.csv"))
    held_out = len(pd.read_csv(run / "evaluation" / "scores.csv"))
    everyone = brainkernels("ppr", "evaluate", "--model", str(run), "--data", str(cohort), "--subjects", "all",
                            "--out", str(tmp_path / "all"), "--negatives", "healthy", "--by-kind", "--quiet",
                            cwd=tmp_path)
    assert everyone.returncode == 0, everyone.stderr
    assert "fracture (skull): " in everyone.stdout
    assert held_out < len(pd.read_csv(tmp_path / "all" / "scores.csv")) == len(list((cohort / "scans").iterdir()))


def test_negatives_and_finding_kinds_choose_the_scans_of_each_auroc(cohort, tmp_path):
    run = train(cohort, tmp_path / "run", PPRConfig(network_size=1, patch=19, steps=2, patches_per_step=8,
                                                    device="cpu"), quiet=True)
    kinds = finding_kinds(read_cohort(cohort).records)
    labels = {label: name for name, (_, label, _) in ppr_evaluate.STRUCTURES.items()}
    for negatives in NEGATIVES:
        out = tmp_path / negatives
        aurocs = evaluate(run, cohort, out, subjects="all", negatives=negatives, by_kind=True, quiet=True)
        scores = pd.read_csv(out / "scores.csv")
        healthy = scores[list(labels)].sum(axis=1) == 0
        expected_names = set()
        for label, structure in labels.items():
            scan_kinds = scores["name"].map(lambda name, label=label: kinds[name].get(label))
            for kind in [None, *sorted(set(scan_kinds.dropna()))]:
                name = structure if kind is None else f"{structure}: {kind}"
                expected_names.add(name)
                positive = (scores[label] == 1) & ((scan_kinds == kind) if kind else True)
                negative = (scores[label] == 0) & (healthy if negatives == "healthy" else True)
                chosen = positive | negative
                if positive.any() and negative.any():
                    expected = roc_auc_score(positive[chosen], scores[f"{label}_max_error"][chosen])
                    assert aurocs[MAX_ERROR][name] == pytest.approx(expected)
        assert set(aurocs[MAX_ERROR]) == expected_names
        assert any(": linear" in name or ": depressed" in name or ": multiple" in name for name in expected_names)
        table = pd.read_csv(out / "auroc.csv")
        assert set(table["negatives"]) == {negatives} and set(table["structure"]) == expected_names
    with pytest.raises(BrainkernelsError, match="--by-kind needs a synthetic cohort"):
        evaluate(run, tmp_path / "no-cohort", tmp_path / "none", by_kind=True, quiet=True)
    with pytest.raises(ValueError, match="negatives must be one of"):
        evaluate(run, cohort, tmp_path / "none", negatives="bleeds", quiet=True)


def test_anomaly_figures_cut_through_and_outline_the_true_finding(cohort, monkeypatch):
    record = next(scan for scan in read_cq500(cohort).scans if scan.left_bleed or scan.right_bleed)
    scan = prepare(record.path)
    truth = ppr_evaluate._true_findings(cohort / "masks", scan)
    assert "true haemorrhage" in truth
    drawn = []
    monkeypatch.setattr(ppr_evaluate, "orthogonal_slices",
                        lambda image, point, **options: drawn.append((point, options)))
    error = torch.zeros(scan.mask.shape)
    error[tuple(torch.nonzero(scan.mask)[0])] = 100  # the map's maximum: one voxel at the head's edge
    ppr_evaluate.anomaly_figure(scan, error, "error vs healthy scans", "SD", truth)
    point, options = drawn[0]
    assert truth["true haemorrhage"][point] and options["outlines"] is truth
    assert options["title"].endswith("error vs healthy scans (maximum 100 SD)")


def test_a_reference_from_an_older_checkpoint_is_not_used(cohort, tmp_path):
    settings = PPRConfig(network_size=1, patch=19, steps=2, patches_per_step=8, checkpoint_every=1, device="cpu")
    run = train(cohort, tmp_path / "run", settings, quiet=True)
    assert healthy_reference.load(RunFolder(run)).checkpoint == "step-00000002.pt"
    stale = run / "checkpoints" / "step-00000003.pt"  # as if training went on and stopped before its end
    stale.write_bytes((run / "checkpoints" / "step-00000002.pt").read_bytes())
    assert healthy_reference.load(RunFolder(run)) is None
    with pytest.warns(UserWarning, match="no healthy reference for its latest checkpoint"):
        aurocs = evaluate(run, cohort, tmp_path / "evaluation", quiet=True)
    assert list(aurocs) == [MAX_ERROR]


def test_python_api_with_the_autoencoder_baseline(cohort, tmp_path):
    settings = PPRConfig(model="ae", network_size=2, steps=3, batch_size=2, checkpoint_every=3, device="cpu", lr=1e-3)
    run = train(cohort, tmp_path / "ae", settings, quiet=True)
    model, loaded = load_trained(run)
    assert loaded == settings and type(model).__name__ == "AutoEncoder"
    aurocs = evaluate(run, cohort, tmp_path / "evaluation", quiet=True)
    assert list(aurocs) == [VS_HEALTHY, MAX_ERROR]
    for per_structure in aurocs.values():
        assert set(per_structure) == {"left hemisphere bleed", "right hemisphere bleed", "fracture (skull)"}
        assert all(np.isnan(value) or 0 <= value <= 1 for value in per_structure.values())
    written = detect(run, cohort / "scans", tmp_path / "maps", quiet=True)
    assert len(written) == 12


def test_bad_inputs_are_refused(cohort, tmp_path):
    run = train(cohort, tmp_path / "run",
                PPRConfig(network_size=1, patch=19, steps=1, patches_per_step=8, device="cpu"), quiet=True)
    wrong_shape = tmp_path / "small.nii.gz"
    head = np.pad(np.random.default_rng(0).uniform(0, 80, (12, 12, 12)), 4, constant_values=-1000)
    nib.save(nib.Nifti1Image(head.astype(np.float32), np.eye(4)), wrong_shape)
    with pytest.raises(BrainkernelsError, match=r"shape \(20, 20, 20\) differs from the training grid"):
        detect(run, wrong_shape, tmp_path / "out", quiet=True)
    air = tmp_path / "air.nii.gz"
    nib.save(nib.Nifti1Image(np.full((SHAPE,) * 3, -1000, np.float32), np.eye(4)), air)
    with pytest.raises(BrainkernelsError, match="the scan is all background"):
        detect(run, air, tmp_path / "out", quiet=True)
    nan_scan = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((SHAPE,) * 3, np.nan, np.float32), np.eye(4)), nan_scan)
    with pytest.raises(ValueError, match="NaN or infinite voxels"):
        detect(run, nan_scan, tmp_path / "out", quiet=True)
    with pytest.raises(BrainkernelsError, match="--masks .*missing: no such folder"):
        detect(run, wrong_shape, tmp_path / "out", masks=tmp_path / "missing", quiet=True)
    with pytest.raises(BrainkernelsError, match="not a run folder"):
        load_trained(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.toml").write_text("latent_size = 128\n")
    with pytest.raises(BrainkernelsError, match="not a PPR run"):
        load_trained(tmp_path / "other")


def test_scans_equalised_by_preprocess_are_not_equalised_twice(cohort, tmp_path):
    raw = sorted((cohort / "scans").glob("*.nii.gz"))[0]
    equalised = save_nifti(equalize_ct(load_nifti(raw)), tmp_path / raw.name)
    from_raw, from_equalised = prepare(raw), prepare(equalised)
    assert torch.equal(from_raw.volume.data, from_equalised.volume.data)
    assert torch.equal(from_raw.mask, from_equalised.mask)


@pytest.mark.parametrize("preset", ["paper", "small"])
def test_each_preset_loads_and_trains(cohort, tmp_path, preset):
    assert preset in config.preset_names(PPRConfig)
    settings = config.load_config(PPRConfig, preset)
    assert settings != PPRConfig()  # the preset changed something (paper: the steps of its 2000 epochs)
    tiny = dataclasses.replace(settings, steps=2, device="cpu", workers=0)
    run = train(cohort, tmp_path / preset, tiny, quiet=True)
    assert load_trained(run)[1] == tiny
