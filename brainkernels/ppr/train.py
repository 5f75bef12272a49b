"""Training PPR (or the autoencoder baseline) on the healthy scans of a CQ500-style cohort."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainkernels.data.cache import PreparedCache
from brainkernels.data.layouts.cq500 import read_cq500
from brainkernels.data.layouts.splits import split_by_subject
from brainkernels.errors import BrainkernelsError
from brainkernels.ppr import healthy_reference, reference_grid
from brainkernels.ppr.autoencoder import AutoEncoder
from brainkernels.ppr.data import PositionPatches, WholeVolumes, cached_scan, check_cohort, preparation_request
from brainkernels.ppr.model import MAX_PATCH, MIN_PATCH, PPRNet
from brainkernels.runtime import Trainer, TrainerConfig, config, latest_checkpoint, setup, teardown
from brainkernels.runtime.claim import claimed_run
from brainkernels.runtime.prepared import cache_folder, prepared_entries
from brainkernels.runtime.trained import load_trained_run

METHOD = "ppr"
ARCHITECTURE_KEYS = ("model", "network_size", "patch")
RUN_FILES = (reference_grid.FILE, healthy_reference.FILE)  # what a PPR run writes beside every run's files
TEST_FRACTION = 0.2  # of the healthy scans, held out with all anomalous scans (paper: 21 of 132)
NEGATIVES = ("all", "healthy")
"""Which held-out scans an AUROC counts as negatives: every scan without the structure's finding
(the paper's test set: a fracture is told apart from healthy scans and from bleeds), or only the
scans without any finding."""


@dataclass(frozen=True)
class PPRConfig(TrainerConfig):
    PRESETS: ClassVar[Path] = Path(__file__).with_name("presets")  # --config paper, small
    MODELS: ClassVar[Path] = Path(__file__).with_name("models")  # --model builtin:NAME
    model: Literal["ppr", "ae"] = field(default="ppr", metadata={"help": "ppr, or the autoencoder baseline ae"})
    # Named m in the paper and until 0.1.0 here; torchrun cannot pass an option named --m (it takes
    # it for an abbreviation of its own --master-addr, --max-restarts, --module, ...).
    network_size: int = field(default=16, metadata={"help": "the paper's network size m (channels and widths scale "
                                                            "with it)", "formerly": "m"})
    patch: int = field(default=31, metadata={"help": "patch edge in voxels"})
    patches_per_step: int = field(default=256, metadata={"help": "patches drawn from each volume per step"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate (paper: 1e-4 PPR, 1e-3 AE)"})
    batch_size: int = field(default=1, metadata={"help": "volumes per optimiser step"})
    steps: int = field(default=2000, metadata={"help": "optimiser steps"})
    split_seed: int = field(default=0, metadata={"help": "seed of the train/test split of the healthy scans"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_at_least(1, "network_size", "patches_per_step")
        self.require_positive("lr")
        if self.model == "ppr" and not MIN_PATCH <= self.patch <= MAX_PATCH:
            raise ValueError(f"key 'patch' must be between {MIN_PATCH} and {MAX_PATCH} voxels; got {self.patch}")


def healthy_split(scans, seed: int) -> tuple[list, list]:
    """(training scans, held-out scans): a share of the healthy scans is held out for testing."""
    healthy = [scan for scan in scans if scan.healthy]
    if not healthy:
        raise BrainkernelsError("the cohort has no healthy scans to train on")
    split = split_by_subject([scan.name for scan in healthy], (1 - TEST_FRACTION, 0.0, TEST_FRACTION), seed)
    train = [scan for scan in healthy if scan.name in split.train]
    return train, [scan for scan in scans if scan.name not in split.train]


def build_model(settings: PPRConfig) -> nn.Module:
    return PPRNet(settings.network_size, settings.patch) if settings.model == "ppr" \
        else AutoEncoder(settings.network_size)


def position_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Mean ||x - f(p_x)|| over the patches that hold any foreground."""
    patches = batch["patches"].flatten(0, 1)
    predicted = model(patches).float()
    distance = torch.linalg.vector_norm(predicted - batch["targets"].flatten(0, 1), dim=1)
    keep = batch["keep"].flatten().float()
    return (distance * keep).sum() / keep.sum().clamp(min=1)


def reconstruction_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    image = batch["image"]
    return F.l1_loss(model(image).float(), image)


def train(data: str | os.PathLike, out: str | os.PathLike, settings: PPRConfig, *, resume: bool = False,
          overwrite: bool = False, quiet: bool = False, cache: str | os.PathLike | None = None) -> Path:
    """Train on the healthy training scans of the cohort at ``data``; the run folder is ``out``
    (refused when it holds anything, unless ``resume`` continues the run there or ``overwrite``
    replaces it), the prepared-volume cache ``cache`` (default: in the run folder)."""
    distributed = setup(settings.device)
    try:
        cohort = read_cq500(data)
        if not any(scan.healthy for scan in cohort.scans):
            raise BrainkernelsError(f"{data}: no healthy scans to train on (by the readers' majority in reads.csv, "
                                    "every scan has a bleed or a fracture); PPR learns from healthy scans only")
        training, _ = healthy_split(cohort.scans, settings.split_seed)
        # The folder is claimed first: the cache lives in it by default.
        with claimed_run(out, distributed, settings, architecture_keys=ARCHITECTURE_KEYS, label="a PPR run",
                         resume=resume, overwrite=overwrite, method_files=RUN_FILES) as run:
            entries = prepared_entries([preparation_request(scan.path, settings.patch) for scan in training],
                                       PreparedCache(cache_folder(cache, run.root)), distributed, quiet=quiet)
            prepared = [cached_scan(entry, scan.path) for entry, scan in zip(entries, training, strict=True)]
            check_cohort(prepared)
            if distributed.is_main:
                reference_grid.save_footprints(run, prepared)
            dataset = PositionPatches(entries, settings.patch, settings.patches_per_step) \
                if settings.model == "ppr" else WholeVolumes(entries)
            trainer = Trainer(
                method=METHOD, build_model=lambda: build_model(settings),
                build_optimizer=lambda parameters: torch.optim.Adam(parameters, lr=settings.lr),
                loss_fn=position_loss if settings.model == "ppr" else reconstruction_loss, dataset=dataset,
                config=settings, distributed=distributed, run=run, run_config=config.to_dict(settings),
                architecture_keys=ARCHITECTURE_KEYS, quiet=quiet,
                memory_advice="--patches-per-step or --network-size" if settings.model == "ppr"
                else "--batch-size or --network-size",
            )
            model = trainer.fit(resume=resume)
            if distributed.is_main and len(prepared) >= 2:  # a spread needs two scans; evaluation copes without
                latest = latest_checkpoint(run.checkpoints)
                healthy_reference.save(run, healthy_reference.build(model.eval(), prepared, latest.name,
                                                                    distributed.device))
            distributed.barrier()
        return run.root
    finally:
        teardown()


def load_trained(run_dir: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, PPRConfig]:
    """The model of a PPR run folder (its latest checkpoint) and the run's configuration."""
    trained = load_trained_run(run_dir, PPRConfig, method=METHOD, architecture_keys=ARCHITECTURE_KEYS,
                               label="a PPR run")
    model = build_model(trained.settings)
    model.load_state_dict(trained.model_state)
    return model.to(device).eval(), trained.settings
