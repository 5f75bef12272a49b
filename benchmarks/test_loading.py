"""Training-sample loading, side by side: the loading path before the prepared-volume cache (the
baseline: in the training process, from the NIfTI files) and the trainer's loader reading the
cache with 0 and 2 worker processes. Times are per ``SAMPLES`` samples (the baseline's measured
on one sample and scaled up): samples per second are ``SAMPLES`` / time.

Sizes (``--bench-scale full``): PatchDDM, a 128^3 patch with coordinate channels from a
240x240x155 four-sequence BraTS-like subject; PPR, 256 patches of 31^3 from a 256^3 CT; the INR,
1 % of the voxels of a 217x290x290 T2. The default scale is a quick reduction of each. Run:

    pytest benchmarks/test_loading.py --bench-scale full -q

Before the cache, PPR already held every prepared training scan in memory (so its baseline is
fast, at the cost of the whole cohort in RAM: ``cohort_in_memory_bytes``), while PatchDDM and the
INR loaded and prepared the NIfTI files of a subject for every sample.

Memory is not measured (``measure_memory=False``): the workers' allocations are in other
processes, and the cached arrays live in the page cache.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from brainkernels.data.cache import PreparedCache
from brainkernels.data.layouts.brats import read_brats
from brainkernels.data.layouts.dhcp import DHCPScan
from brainkernels.data.sampling import center_weighted_patch_starts
from brainkernels.data.volume import load_nifti
from brainkernels.inr.data import ModelGrid, SampledVoxels, prepare_input
from brainkernels.inr.data import preparation_request as inr_request
from brainkernels.ops import extract_patches3d
from brainkernels.ops.coordinate_mlp import grid_coordinates
from brainkernels.patchddm.data import TrainingSamples, network_input, prepare_subject
from brainkernels.patchddm.data import preparation_request as patchddm_request
from brainkernels.patchddm.train import PatchDDMConfig
from brainkernels.ppr.data import PositionPatches, near_foreground, prepare
from brainkernels.ppr.data import preparation_request as ppr_request
from brainkernels.ppr.infer import normalised_positions
from brainkernels.runtime import Distributed, Trainer, TrainerConfig
from brainkernels.runtime.prepared import prepared_entries

SUBJECTS = 3
SAMPLES = {"small": 16, "full": 16}
WORKERS = (0, 2)
SIZES = {
    "patchddm": {"small": ((120, 120, 78), 64), "full": ((240, 240, 155), 128)},  # volume, patch edge
    "ppr": {"small": ((96, 96, 96), 31, 256), "full": ((256, 256, 256), 31, 256)},  # volume, patch, count
    "inr": {"small": ((54, 72, 72), 0.01), "full": ((217, 290, 290), 0.01)},  # volume, share of voxels
}
ALONE = Distributed(rank=0, world_size=1, device=torch.device("cpu"))


def loader_batches(dataset, workers: int):
    """The trainer's own loader: one sample per step."""
    config = TrainerConfig(batch_size=1, workers=workers, steps=10**9)
    trainer = Trainer(method="benchmark", build_model=None, build_optimizer=None, loss_fn=None, dataset=dataset,
                      config=config, distributed=ALONE, quiet=True)
    return trainer.batches(0, torch.device("cpu"))


LOADERS = ["before the cache", *(f"cache, {workers} workers" for workers in WORKERS)]


def run_loader(compare, loader: str, group: str, baseline, dataset, scale: str, **info) -> None:
    """Time ``SAMPLES[scale]`` samples of ``loader``: the baseline (one sample, scaled up) or the
    trainer's loader over ``dataset`` with some workers."""
    samples = SAMPLES[scale]
    if loader == "before the cache":
        compare(group, loader, baseline, baseline=True, extrapolate=samples, measure_memory=False, samples=samples,
                **info)
        return
    workers = int(loader.split()[1])
    batches = loader_batches(dataset, workers)
    next(batches)  # starts the workers
    compare(group, loader, lambda: [next(batches) for _ in range(samples)], measure_memory=False, samples=samples,
            workers=workers, **info)
    batches.close()


def cached(requests) -> tuple[list, float]:
    """The entries of ``requests`` in a fresh cache, and the seconds it took to build one."""
    root = Path(tempfile.mkdtemp(prefix="brainkernels-loading-"))
    started = time.perf_counter()
    entries = prepared_entries(requests, PreparedCache(root), ALONE, quiet=True)
    return entries, (time.perf_counter() - started) / len(requests)


@pytest.fixture(scope="module")
def brats(tmp_path_factory, scale, volumes):
    shape, patch = SIZES["patchddm"][scale]
    root = tmp_path_factory.mktemp("brats")
    for index in range(SUBJECTS):
        subject = f"BraTS20_Training_{index + 1:03d}"
        folder = root / subject
        for channel, modality in enumerate(("t1", "t1ce", "t2", "flair")):
            image = volumes.head(shape, 10 * index + channel, 600, 150, 0)
            volumes.save(folder / f"{subject}_{modality}.nii.gz", image)
        seg = volumes.head(shape, 10 * index + 9, 0, 1, 0)
        volumes.save(folder / f"{subject}_seg.nii.gz", np.select([seg > 1.0, seg > 0.5, seg > 0.2], [4, 2, 1], 0))
    subjects = read_brats(root)
    multiple = PatchDDMConfig(patch=patch).volume_multiple
    return subjects, multiple, *cached([patchddm_request(s, multiple, with_mask=True) for s in subjects])


@pytest.mark.parametrize("loader", LOADERS)
def test_patchddm_patch_samples(compare, loader, scale, brats):
    shape, patch = SIZES["patchddm"][scale]
    subjects, multiple, entries, build_s = brats

    def before_the_cache():  # what TrainingSamples did for every sample
        prepared = prepare_subject(subjects[0], multiple, with_mask=True)
        condition = network_input(prepared.image, "patch")
        start = center_weighted_patch_starts(condition.shape[1:], patch, 1)[0].tolist()
        window = (slice(None), *(slice(s, s + patch) for s in start))
        return {"condition": condition[window].clone(), "mask": prepared.mask[window].clone()}

    run_loader(compare, loader, f"PatchDDM: {patch}^3 patches + coordinates from {'x'.join(map(str, shape))}x4",
               before_the_cache, TrainingSamples(entries, "patch", patch), scale, cache_build_s_per_subject=build_s)


@pytest.fixture(scope="module")
def ct_scans(tmp_path_factory, scale, volumes):
    shape, patch, _ = SIZES["ppr"][scale]
    root = tmp_path_factory.mktemp("ct")
    paths = [root / f"CQ500-CT-{index}.nii.gz" for index in range(SUBJECTS)]
    for index, path in enumerate(paths):
        volumes.save(path, volumes.head(shape, index, 40, 15, -1000))
    return paths, *cached([ppr_request(path, patch) for path in paths])


@pytest.mark.parametrize("loader", LOADERS)
def test_ppr_patch_samples(compare, loader, scale, ct_scans):
    shape, patch, count = SIZES["ppr"][scale]
    paths, entries, build_s = ct_scans
    info = {"cache_build_s_per_subject": build_s}
    if loader == "before the cache":  # every training scan prepared once and held in memory
        scans = [prepare(path) for path in paths]
        keep = [near_foreground(scan.mask, patch) for scan in scans]
        info["cohort_in_memory_bytes"] = sum(scan.volume.data.nbytes + scan.mask.nbytes + near.nbytes
                                             for scan, near in zip(scans, keep))

    def before_the_cache():
        centers = torch.stack([torch.randint(0, size, (count,)) for size in shape], dim=1)
        return {"patches": extract_patches3d(scans[0].volume.data, centers, patch),
                "targets": normalised_positions(centers, shape), "keep": keep[0][tuple(centers.T)]}

    run_loader(compare, loader, f"PPR: {count} patches of {patch}^3 from {'x'.join(map(str, shape))}",
               before_the_cache, PositionPatches(entries, patch, count), scale, **info)


@pytest.fixture(scope="module")
def t2_scans(tmp_path_factory, scale, volumes):
    shape, _ = SIZES["inr"][scale]
    grid = ModelGrid(shape, (0.5, 0.5, 0.5), 3)
    root = tmp_path_factory.mktemp("dhcp")
    scans = []
    for index in range(SUBJECTS):
        path = root / f"sub-{index}_T2w.nii.gz"
        volumes.save(path, volumes.head(shape, index, 400, 100, 20), spacing=0.5)
        scans.append(DHCPScan(f"S{index}", "1", 40.0, path, None))
    return scans, grid, *cached([inr_request(scan, grid) for scan in scans])


@pytest.mark.parametrize("loader", LOADERS)
def test_inr_voxel_samples(compare, loader, scale, t2_scans):
    shape, share = SIZES["inr"][scale]
    scans, grid, entries, build_s = t2_scans
    dataset = SampledVoxels(entries, scans, grid, list(range(SUBJECTS)), share, 0.9)
    coordinates = grid_coordinates(shape) if loader == "before the cache" else None  # made once, as before

    def before_the_cache():  # what SampledVoxels did for every sample
        prepared = prepare_input(load_nifti(scans[0].t2w_path), grid, str(scans[0].t2w_path))
        inside = torch.nonzero(prepared.foreground.reshape(-1))[:, 0]
        chosen = torch.cat([inside[torch.randint(len(inside), (dataset.foreground_samples,))],
                            torch.randint(math.prod(shape), (dataset.samples - dataset.foreground_samples,))])
        return {"coords": coordinates[chosen], "targets": prepared.image.reshape(-1)[chosen]}

    run_loader(compare, loader, f"INR: {share:.0%} of the voxels of {'x'.join(map(str, shape))}", before_the_cache,
               dataset, scale, cache_build_s_per_subject=build_s)
