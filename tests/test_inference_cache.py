"""Cohort inference reads the prepared-volume cache: ``evaluate`` of each method maps the entries
its run's training built (same sources, same settings, same key) and builds only the missing
ones, in the run's cache unless told otherwise; the maps equal the preparation without a cache."""

import importlib

import numpy as np
import pytest
import torch

from brainkernels.data.cache import PreparedCache
from brainkernels.data.layouts.dhcp import read_dhcp
from brainkernels.data.synth.cohort import write_cohort
from brainkernels.data.volume import load_nifti
from brainkernels.inr import evaluate as inr_evaluate
from brainkernels.inr.data import cached_input, preparation_request, prepare_input
from brainkernels.inr.train import INRConfig, model_grid
from brainkernels.inr.train import train as inr_train
from brainkernels.patchddm import evaluate as patchddm_evaluate
from brainkernels.patchddm.train import PatchDDMConfig
from brainkernels.patchddm.train import train as patchddm_train
from brainkernels.ppr import evaluate as ppr_evaluate
from brainkernels.ppr.train import PPRConfig
from brainkernels.ppr.train import train as ppr_train
from brainkernels.runtime import shipped
from brainkernels.runtime.prepared import CACHE_FOLDER

SHAPE = 16


METHODS = {
    # 24^3: on 16^3 scans a patch of 19 (the least PPR takes) leaves some evaluation scores NaN.
    "ppr": ("cq500", 8, lambda data, out, cache: ppr_train(
        data, out, PPRConfig(network_size=2, patch=19, patches_per_step=8, steps=1, device="cpu"), quiet=True,
        cache=cache),
        lambda run, data, out, cache, workers: ppr_evaluate.evaluate(
            run, data, out, device="cpu", workers=workers, quiet=True, cache=cache, subjects="all")),
    "patchddm": ("brats", 6, lambda data, out, cache: patchddm_train(
        data, out, PatchDDMConfig(channels=4, channel_mult=(1, 2), patch=8, steps=1, device="cpu"), quiet=True,
        cache=cache),
        lambda run, data, out, cache, workers: patchddm_evaluate.evaluate(
            run, data, out, steps=[2], ensemble=[1], device="cpu", workers=workers, quiet=True, cache=cache,
            subjects="all")),
    "inr": ("dhcp", 6, lambda data, out, cache: inr_train(
        data, out, INRConfig(steps=1, batch_size=2, width=16, depth=2, latent_size=4, device="cpu"), quiet=True,
        cache=cache),
        lambda run, data, out, cache, workers: inr_evaluate.evaluate(
            run, data, out, fit_steps=2, device="cpu", workers=workers, quiet=True, cache=cache, subjects="all")),
}


def entry_folders(cache):
    return {path.name: path.joinpath("entry.json").stat().st_mtime_ns for path in cache.iterdir()}


@pytest.fixture(scope="module", params=sorted(METHODS))
def trained(request, tmp_path_factory):
    kind, subjects, train, evaluate = METHODS[request.param]
    root = tmp_path_factory.mktemp(request.param)
    write_cohort(kind, root / "data", subjects=subjects, shape=24 if kind == "cq500" else SHAPE, seed=3,
                 **({"rescanned": 0.8} if kind == "dhcp" else {}))
    run = train(root / "data", root / "run", None)
    method = importlib.import_module(f"brainkernels.{request.param}.train")
    exported = shipped.export(run, root / "exported", method=method.METHOD, method_files=method.RUN_FILES)
    return root / "data", run, evaluate, exported


def test_evaluation_reads_the_entries_training_built(trained, monkeypatch):
    data, run, evaluate, _ = trained
    built_by_training = entry_folders(run / CACHE_FOLDER)
    first = evaluate(run, data, None, None, 2)
    after = entry_folders(run / CACHE_FOLDER)
    # Every subject is evaluated (the training's too): the training's entries are read, not rebuilt.
    assert {name: after[name] for name in built_by_training} == built_by_training
    assert len(after) > len(built_by_training)

    def no_build(cache, request):
        raise AssertionError(f"built {request.sources} again")

    monkeypatch.setattr(PreparedCache, "build", no_build)
    again = evaluate(run, data, None, None, 0)
    assert str(again) == str(first)  # Undefined values compare by their text
    assert entry_folders(run / CACHE_FOLDER) == after


def test_a_named_cache_is_used_and_a_run_without_one_evaluates_with_out_cache(trained, tmp_path):
    data, run, evaluate, exported = trained
    before = entry_folders(run / CACHE_FOLDER)
    evaluate(run, data, tmp_path / "out", tmp_path / "named", 0)
    assert entry_folders(tmp_path / "named") and not (tmp_path / "out" / CACHE_FOLDER).exists()
    assert entry_folders(run / CACHE_FOLDER) == before
    evaluate(exported, data, tmp_path / "exported-out", None, 0)  # an exported run has no cache
    assert entry_folders(tmp_path / "exported-out" / CACHE_FOLDER) and not (exported / CACHE_FOLDER).exists()


@pytest.mark.parametrize("dims", [2, 3])
def test_a_cached_inr_model_input_equals_the_uncached_one(tmp_path, dims):
    write_cohort("dhcp", tmp_path / "data", subjects=2, shape=SHAPE, seed=1)
    scan = read_dhcp(tmp_path / "data")[0]
    grid = model_grid([scan], dims)
    cached = cached_input(PreparedCache(tmp_path / "cache").get(preparation_request(scan, grid)))
    direct = prepare_input(load_nifti(scan.t2w_path), grid, "scan")
    assert torch.equal(cached.image, direct.image) and torch.equal(cached.foreground, direct.foreground)
    assert cached.scale == direct.scale and np.array_equal(cached.affine, direct.affine)
