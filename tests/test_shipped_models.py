"""Exported and shipped models: a run reduced to its weights loads and infers exactly as the run,
``builtin:NAME`` finds a model shipped in a method's MODELS folder, and a shipped model's folder is
never written to."""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from brainkernels import info
from brainkernels.data.synth.cohort import write_cohort
from brainkernels.errors import BrainkernelsError
from brainkernels.inr import train as inr_train
from brainkernels.patchddm import train as patchddm_train
from brainkernels.ppr import train as ppr_train
from brainkernels.ppr.evaluate import detect, evaluate
from brainkernels.runtime import RunFolder, checkpoint, shipped

CARD = """name = "toy"
method = "ppr"
summary = "a toy PPR model"
intended_use = "tests only; trained on synthetic data, not for clinical use"
[training]
command = "brainkernels ppr train ..."
[metrics."left bleed AUROC"]
value = 0.5
tolerance = 0.1
"""


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    write_cohort("cq500", root, subjects=10, shape=32, seed=3)
    return root


@pytest.fixture(scope="module")
def ppr_run(ct, tmp_path_factory):
    settings = ppr_train.PPRConfig(network_size=2, patch=19, patches_per_step=16, steps=3, checkpoint_every=3,
                                   device="cpu")
    return ppr_train.train(ct, tmp_path_factory.mktemp("ppr") / "run", settings, quiet=True)


@pytest.fixture
def shipped_toy(ppr_run, tmp_path, monkeypatch):
    """``ppr_run`` exported as the shipped PPR model ``toy``."""
    models = tmp_path / "models"
    shipped.export(ppr_run, models / "toy", method=ppr_train.METHOD, method_files=ppr_train.RUN_FILES)
    (models / "toy" / shipped.CARD).write_text(CARD)
    monkeypatch.setattr(ppr_train.PPRConfig, "MODELS", models)
    return models / "toy"


def test_an_export_keeps_the_weights_and_drops_the_optimiser(ppr_run, tmp_path):
    out = shipped.export(ppr_run, tmp_path / "exported", method=ppr_train.METHOD, method_files=ppr_train.RUN_FILES)
    original = checkpoint.latest_checkpoint(RunFolder(ppr_run).checkpoints)
    exported = checkpoint.latest_checkpoint(RunFolder(out).checkpoints)
    assert exported.name == original.name and exported.stat().st_size < original.stat().st_size
    payload = torch.load(exported, weights_only=True)
    assert payload["optimizer"] is None and payload["rng"] is None
    reference = torch.load(original, weights_only=True)["model"]
    assert payload["model"].keys() == reference.keys()
    assert all(torch.equal(payload["model"][key], reference[key]) for key in reference)
    assert sorted(path.name for path in out.iterdir()) == sorted(["config.toml", "checkpoints", *ppr_train.RUN_FILES])
    with pytest.raises(BrainkernelsError, match="already exists"):
        shipped.export(ppr_run, out, method=ppr_train.METHOD, method_files=ppr_train.RUN_FILES)
    with pytest.raises(BrainkernelsError, match="not a run folder with a checkpoint"):
        shipped.export(tmp_path / "nothing", tmp_path / "other", method=ppr_train.METHOD, method_files=())
    assert not (tmp_path / "other").exists() and [path.name for path in tmp_path.iterdir()] == ["exported"]


def test_a_shipped_model_detects_exactly_as_its_run(ct, ppr_run, shipped_toy, tmp_path):
    scan = sorted((ct / "scans").iterdir())[0]
    name = scan.name.removesuffix(".nii.gz")
    maps = {}
    for label, model in (("run", ppr_run), ("builtin", "builtin:toy")):
        detect(model, scan, tmp_path / label, device="cpu", workers=0, quiet=True)
        maps[label] = np.asarray(nib.load(tmp_path / label / f"{name}_anomaly.nii.gz").dataobj)
    np.testing.assert_array_equal(maps["builtin"], maps["run"])
    before = sorted(path.relative_to(shipped_toy) for path in shipped_toy.rglob("*"))
    with pytest.raises(BrainkernelsError, match="--out: needed with the shipped model builtin:toy"):
        evaluate("builtin:toy", ct, device="cpu", workers=0, quiet=True)
    evaluate("builtin:toy", ct, tmp_path / "evaluation", device="cpu", workers=0, quiet=True)
    assert (tmp_path / "evaluation" / "auroc.csv").is_file()
    assert sorted(path.relative_to(shipped_toy) for path in shipped_toy.rglob("*")) == before


def test_unknown_shipped_models_and_cards_are_refused_by_name(shipped_toy, tmp_path, monkeypatch):
    monkeypatch.setattr(patchddm_train.PatchDDMConfig, "MODELS", tmp_path / "no-models")
    with pytest.raises(BrainkernelsError, match=r"--model builtin:tyo: no such shipped model \(shipped: toy\)"):
        ppr_train.load_trained("builtin:tyo")
    with pytest.raises(BrainkernelsError, match=r"no such shipped model \(shipped: none\)"):
        patchddm_train.load_trained("builtin:toy")
    (shipped_toy / shipped.CARD).write_text(CARD.replace('summary = "a toy PPR model"\n', ""))
    with pytest.raises(BrainkernelsError, match="card.toml: the model card has no 'summary'"):
        shipped.read_card(shipped_toy)


def test_info_and_help_list_the_shipped_models(shipped_toy):
    listed = [model for model in info.collect()["shipped_models"] if model["model"] == "builtin:toy"]
    assert listed == [{"model": "builtin:toy", "method": "ppr", "summary": "a toy PPR model",
                       "metrics": {"left bleed AUROC": 0.5}}]
    report = info.format_report(info.collect())
    assert "builtin:toy  a toy PPR model (left bleed AUROC 0.5); use as --model builtin:toy" in report
    assert "not for clinical use" in report


def test_every_method_exports_from_the_command_line(tmp_path):
    brats, dhcp = tmp_path / "brats", tmp_path / "dhcp"
    write_cohort("brats", brats, subjects=10, shape=24, seed=4)
    write_cohort("dhcp", dhcp, subjects=8, shape=16, seed=2, rescanned=0.8)
    runs = {
        "patchddm": patchddm_train.train(brats, tmp_path / "patchddm", patchddm_train.PatchDDMConfig(
            channels=4, channel_mult=(1, 2, 2), patch=12, steps=2, checkpoint_every=2, device="cpu"), quiet=True),
        "inr": inr_train.train(dhcp, tmp_path / "inr", inr_train.INRConfig(
            dims=2, steps=2, width=16, depth=3, latent_size=8, batch_size=2, device="cpu"), quiet=True),
    }
    loaders = {"patchddm": lambda run: patchddm_train.load_trained(run)[0],
               "inr": lambda run: inr_train.load_trained(run).model}
    for method, run in runs.items():
        result = subprocess.run([sys.executable, "-m", "brainkernels", method, "export", "--model", str(run),
                                 "--out", str(tmp_path / f"{method}-exported")], capture_output=True, text=True,
                                cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        original, exported = (loaders[method](path).state_dict() for path in (run, tmp_path / f"{method}-exported"))
        assert original.keys() == exported.keys()
        assert all(torch.equal(original[key], exported[key]) for key in original)


def test_an_exported_model_is_fine_tuned_from_its_weights_with_a_new_optimiser(ct, ppr_run, tmp_path, capfd):
    copy = shipped.export(ppr_run, tmp_path / "copy", method=ppr_train.METHOD, method_files=ppr_train.RUN_FILES)
    weights = torch.load(checkpoint.latest_checkpoint(RunFolder(copy).checkpoints), weights_only=True)["model"]
    settings = ppr_train.PPRConfig(network_size=2, patch=19, patches_per_step=16, steps=5, checkpoint_every=5,
                                   device="cpu", lr=1e-12)
    ppr_train.train(ct, copy, settings, resume=True, quiet=True)
    assert "weights only (an exported model)" in capfd.readouterr().err
    tuned = torch.load(checkpoint.latest_checkpoint(RunFolder(copy).checkpoints), weights_only=True)
    assert tuned["step"] == 5 and tuned["optimizer"] is not None
    # Adam moves each weight by about lr per step: five steps of 1e-12 leave the parameters where the export put
    # them (a fresh initialisation would be far off), so training started from them. The spectral norm's
    # power-iteration vectors (buffers "_u", "_v") move on every training forward and are left out.
    parameters = [key for key in weights if not key.endswith(("._u", "._v"))]
    assert all(torch.allclose(tuned["model"][key], weights[key], rtol=0, atol=1e-9) for key in parameters)
