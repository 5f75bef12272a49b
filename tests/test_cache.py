"""The prepared-volume cache: hits, rebuilds on a changed source or setting, atomic builds, one
builder under torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from brainkernels.data import cache as cache_module
from brainkernels.data.cache import PreparedCache, Request
from brainkernels.data.layouts.cq500 import read_cq500
from brainkernels.data.synth.cohort import write_cohort
from brainkernels.data.volume import load_nifti, save_nifti
from brainkernels.errors import BrainkernelsError
from brainkernels.ppr.train import healthy_split
from brainkernels.runtime import Distributed
from brainkernels.runtime.prepared import prepared_entries

ALONE = Distributed(rank=0, world_size=1, device=None)


class CountingPreparation:
    """A preparation of ``source`` (its bytes as a float array, times ``scale``) that counts its runs."""

    def __init__(self, source, scale: float = 1.0) -> None:
        self.source, self.scale, self.runs = source, scale, 0

    def request(self) -> Request:
        return Request("test", [self.source], {"scale": self.scale}, self)

    def __call__(self):
        self.runs += 1
        data = np.frombuffer(self.source.read_bytes(), dtype=np.uint8).astype(np.float32) * self.scale
        return {"image": data.reshape(1, -1), "mask": data > 100}, {"affine": np.eye(4).tolist()}


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "scan.nii"
    path.write_bytes(bytes(range(256)) * 3)
    return path


def test_a_built_entry_is_mapped_equal_and_not_built_again(tmp_path, source):
    preparation = CountingPreparation(source)
    store = PreparedCache(tmp_path / "cache")
    assert store.lookup(preparation.request()) is None
    built = store.get(preparation.request())
    again = store.get(preparation.request())
    assert preparation.runs == 1 and again.folder == built.folder
    arrays, values = preparation()
    np.testing.assert_array_equal(again.tensor("image").numpy(), arrays["image"])
    np.testing.assert_array_equal(again.tensor("mask").numpy(), arrays["mask"])
    assert again.values == values
    image = again.tensor("image")
    image += 1  # stays in this process: the entry is unchanged
    np.testing.assert_array_equal(again.tensor("image").numpy(), arrays["image"])


def test_a_changed_source_rebuilds_its_entry(tmp_path, source):
    preparation = CountingPreparation(source)
    store = PreparedCache(tmp_path / "cache")
    first = store.get(preparation.request())
    source.write_bytes(bytes(range(100, 200)))
    assert store.lookup(preparation.request()) is None
    second = store.get(preparation.request())
    assert preparation.runs == 2 and second.folder == first.folder  # replaced in place
    np.testing.assert_array_equal(second.tensor("image")[0].numpy(), np.arange(100, 200, dtype=np.float32))
    # Same size, new modification time: rebuilt too.
    os.utime(source, ns=(0, source.stat().st_mtime_ns + 10**9))
    store.get(preparation.request())
    assert preparation.runs == 3
    assert [path.name for path in store.root.iterdir()] == [first.folder.name]


def test_other_settings_make_another_entry(tmp_path, source):
    store = PreparedCache(tmp_path / "cache")
    plain, doubled = CountingPreparation(source), CountingPreparation(source, scale=2.0)
    first, second = store.get(plain.request()), store.get(doubled.request())
    assert first.folder != second.folder and plain.runs == doubled.runs == 1
    np.testing.assert_array_equal(second.tensor("image").numpy(), 2 * first.tensor("image").numpy())
    assert store.get(plain.request()).folder == first.folder and plain.runs == 1


def test_a_build_killed_while_writing_leaves_no_entry(tmp_path, source, monkeypatch):
    preparation = CountingPreparation(source)
    store = PreparedCache(tmp_path / "cache")
    real_save = np.save

    def save_half_then_fail(handle, array):
        if array.dtype == np.bool_:  # the second array: half of it, then the "kill"
            handle.write(b"\x93NUMPY" + bytes(10))
            raise KeyboardInterrupt
        real_save(handle, array)

    monkeypatch.setattr(cache_module.np, "save", save_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        store.build(preparation.request())
    assert store.lookup(preparation.request()) is None
    assert not (store.root / preparation.request().key).exists()
    # A build killed outright (no cleanup at all) leaves its temporary folder: never read, removed later.
    leftover = store.root / f".{preparation.request().key}.building-killed"
    leftover.mkdir()
    (leftover / "entry.json").write_text("{}")
    assert store.lookup(preparation.request()) is None
    monkeypatch.setattr(cache_module.np, "save", real_save)
    entry = store.get(preparation.request())
    np.testing.assert_array_equal(entry.tensor("mask").numpy(), preparation()[0]["mask"])
    assert [path.name for path in store.root.iterdir()] == [entry.folder.name]


def test_a_missing_source_is_named(tmp_path, source):
    preparation = CountingPreparation(source)
    source.unlink()
    with pytest.raises(FileNotFoundError, match="scan.nii: no such file"):
        PreparedCache(tmp_path / "cache").get(preparation.request())


def test_cohort_entries_are_built_once_in_order(tmp_path, source):
    other = tmp_path / "other.nii"
    other.write_bytes(bytes(range(50)))
    preparations = [CountingPreparation(source), CountingPreparation(other)]
    store = PreparedCache(tmp_path / "cache")
    entries = prepared_entries([p.request() for p in preparations], store, ALONE, quiet=True)
    entries = prepared_entries([p.request() for p in preparations], store, ALONE, quiet=True)
    assert [p.runs for p in preparations] == [1, 1]
    assert entries[1].tensor("image").shape == (1, 50)


def test_entries_missing_on_another_rank_are_reported(tmp_path, source):
    not_main = Distributed(rank=1, world_size=1, device=None)  # world of one: no barrier to wait at
    with pytest.raises(BrainkernelsError, match="missing after rank 0 built it"):
        prepared_entries([CountingPreparation(source).request()], PreparedCache(tmp_path / "c"), not_main, quiet=True)


def _ppr_train_under_torchrun(data, out, cwd, log) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(Path(__file__).with_name("torchrun_cache.py")), "ppr", "train", "--data", str(data), "--out", str(out),
         "--network-size", "2", "--patch", "19", "--patches-per-step", "8", "--steps", "2", "--batch-size", "2",
         "--workers", "0", "--device", "cpu", "--quiet"],
        capture_output=True, text=True, timeout=300, cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", "BUILD_LOG": str(log)})


def test_two_processes_train_from_an_empty_cache(tmp_path):
    write_cohort("cq500", tmp_path / "data", subjects=6, shape=24, seed=1)
    training, _ = healthy_split(read_cq500(tmp_path / "data").scans, 0)
    log = tmp_path / "builds.log"
    result = _ppr_train_under_torchrun(tmp_path / "data", tmp_path / "run", tmp_path, log)
    assert result.returncode == 0, result.stderr[-4000:]
    builds = [line.split() for line in log.read_text().splitlines()]
    assert {rank for rank, _ in builds} == {"0"} and len({key for _, key in builds}) == len(builds) == len(training)
    cache = tmp_path / "run" / "cache"
    assert sorted(path.name for path in cache.iterdir()) == sorted(key for _, key in builds)  # no leftovers
    mapped = [json.loads((tmp_path / f"entries-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert mapped[0] == mapped[1] and sorted(mapped[0]) == sorted(key for _, key in builds)


def test_a_scan_rank_0_cannot_prepare_stops_both_ranks_with_its_error(tmp_path):
    write_cohort("cq500", tmp_path / "data", subjects=6, shape=24, seed=1)
    training, _ = healthy_split(read_cq500(tmp_path / "data").scans, 0)
    blank = load_nifti(training[-1].path)
    save_nifti(blank.with_data(torch.full_like(blank.data, -1000.0)), training[-1].path)  # air only
    result = _ppr_train_under_torchrun(tmp_path / "data", tmp_path / "run", tmp_path, tmp_path / "builds.log")
    assert result.returncode != 0
    assert result.stderr.count(f"{training[-1].path}: the scan is all background") == 2, result.stderr[-4000:]
