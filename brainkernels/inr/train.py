"""Training the INR auto-decoder on a dHCP-layout cohort: the network and the training latents
are optimised jointly (AdamW, L2 loss on sampled voxels), with SSL (one latent per subject rather
than per scan) and SGLA (with probability ``sgla`` a step uses the global latent)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import Tensor

from brainkernels.atomic import atomic_path
from brainkernels.data.cache import PreparedCache
from brainkernels.data.layouts.dhcp import DHCPScan, read_dhcp, scans_by_subject
from brainkernels.data.layouts.splits import split_by_subject
from brainkernels.data.volume import read_grid, voxel_spacing
from brainkernels.errors import BrainkernelsError
from brainkernels.inr.data import GRID_FILE, ModelGrid, SampledVoxels, preparation_request
from brainkernels.inr.model import NORM_TYPES, AutoDecoder
from brainkernels.runtime import Trainer, TrainerConfig, config, setup, teardown
from brainkernels.runtime.claim import claimed_run
from brainkernels.runtime.prepared import cache_folder, prepared_entries
from brainkernels.runtime.trained import load_trained_run

METHOD = "inr"
ARCHITECTURE_KEYS = ("dims", "ssl", "latent_size", "width", "depth", "activation")
LATENTS_FILE = "latents.json"
PAIRS_FILE = "pairs.csv"  # written into each variant's run by the ablation
RUN_FILES = (GRID_FILE, LATENTS_FILE, PAIRS_FILE)  # what an INR run writes beside every run's files
MIRRORED = "#flip"  # suffix of a mirrored baby's latent name
TEST_FRACTION = 0.2
"""Of the subjects with two or more sessions, held out to test predicting one session from another."""


@dataclass(frozen=True)
class INRConfig(TrainerConfig):
    PRESETS: ClassVar[Path] = Path(__file__).with_name("presets")  # --config paper, small
    MODELS: ClassVar[Path] = Path(__file__).with_name("models")  # --model builtin:NAME
    dims: int = field(default=3, metadata={"help": "2: the central axial slice of each scan; 3: the volume"})
    ssl: bool = field(default=True, metadata={"help": "one latent per subject (SSL); false: one per scan"})
    sgla: float = field(default=0.1, metadata={"help": "probability that a step uses the global latent (0: off)"})
    pixel_ratio: float = field(default=0.05, metadata={"help": "share of a scan's voxels sampled per step"})
    foreground_share: float = field(default=0.9, metadata={"help": "share of the sampled voxels taken in the head"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    latent_size: int = field(default=128, metadata={"help": "length of the latent vectors"})
    width: int = field(default=128, metadata={"help": "hidden width of the MLP"})
    depth: int = field(default=8, metadata={"help": "layers of the MLP"})
    activation: Literal["wire", "siren", "relu"] = field(default="wire", metadata={"help": "activation"})
    max_norm: float = field(default=1.0, metadata={"help": "bound on the norm of every latent"})
    flip: bool = field(default=True, metadata={"help": "mirror half of the items left-right, each mirrored scan "
                                              "a baby of its own (latent SUBJECT#flip), as the paper's code"})
    norm_type: float = field(default=math.inf, metadata={"help": "the norm max_norm bounds: inf (every component, "
                                                         "as the paper's code) or 2 (the vector's length)"})
    fused: bool = field(default=True, metadata={"help": "fused coordinate-MLP op (false: plain PyTorch MLP)"})
    batch_size: int = field(default=4, metadata={"help": "scans per optimiser step"})
    split_seed: int = field(default=0, metadata={"help": "seed of the choice of held-out test subjects"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dims not in (2, 3):
            raise ValueError(f"key 'dims' must be 2 or 3; got {self.dims}")
        for name in ("sgla", "foreground_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"key '{name}' must lie in [0, 1]; got {getattr(self, name)}")
        if not 0 < self.pixel_ratio <= 1:
            raise ValueError(f"key 'pixel_ratio' must lie in (0, 1]; got {self.pixel_ratio}")
        self.require_at_least(1, "latent_size", "width", "depth")
        self.require_positive("lr", "max_norm")
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"key 'norm_type' must be 2 or inf; got {self.norm_type}")


def split_test_subjects(scans: list[DHCPScan], seed: int) -> tuple[list[DHCPScan], list[str]]:
    """(training scans, test subject ids): a share (at least one) of the subjects with two or
    more sessions is held out whole; every other subject trains."""
    longitudinal = [subject for subject, sessions in scans_by_subject(scans).items() if len(sessions) >= 2]
    if not longitudinal:
        return list(scans), []
    share = max(1, round(TEST_FRACTION * len(longitudinal))) / len(longitudinal)
    test = list(split_by_subject(longitudinal, (1 - share, 0.0, share), seed).test)
    return [scan for scan in scans if scan.subject_id not in test], test


def latent_keys(scans: list[DHCPScan], ssl: bool, flip: bool) -> list[str]:
    """The training latents' names, in table order: subject ids (SSL) or ``subject/session``, then
    (``flip``) the same names with ``MIRRORED`` appended, the mirrored babies'."""
    keys = sorted({_latent_key(scan, ssl) for scan in scans})
    return keys + [key + MIRRORED for key in keys] if flip else keys


def unmirrored_rows(keys: Sequence[str]) -> list[int]:
    """The table rows of the real babies (the mirrored ones are augmentation, not subjects)."""
    return [row for row, key in enumerate(keys) if not key.endswith(MIRRORED)]


def _latent_key(scan: DHCPScan, ssl: bool) -> str:
    return scan.subject_id if ssl else f"{scan.subject_id}/{scan.session_id}"


def model_grid(scans: list[DHCPScan], dims: int) -> ModelGrid:
    """The training scans' common grid, read from their headers; scans on different grids are
    refused by name."""
    shape, affine = read_grid(scans[0].t2w_path)
    for scan in scans[1:]:
        other, _ = read_grid(scan.t2w_path)
        if other != shape:
            raise BrainkernelsError(f"{scan.t2w_path}: shape {other} differs from {shape} of "
                                    f"{scans[0].t2w_path}; the INR needs all scans on one grid")
    return ModelGrid(shape, voxel_spacing(affine), dims)


def build_model(settings: INRConfig, keys: int) -> AutoDecoder:
    return AutoDecoder(keys, dims=settings.dims, latent_size=settings.latent_size, width=settings.width,
                       depth=settings.depth, activation=settings.activation, max_norm=settings.max_norm,
                       norm_type=settings.norm_type, fused=settings.fused)


def reconstruction_loss(sgla: float):
    """The L2 loss of a batch of sampled voxels; with probability ``sgla`` the whole batch is
    decoded from the global latent instead of its own latents."""

    def loss(model, batch: dict[str, Tensor]) -> Tensor:
        indices = batch["latent_index"]
        if sgla and torch.rand(()) < sgla:
            indices = torch.full_like(indices, getattr(model, "module", model).global_index)
        predicted = model(batch["coords"], batch["age"], indices)
        return torch.mean((predicted.float() - batch["targets"]) ** 2)

    return loss


def train(data: str | os.PathLike, out: str | os.PathLike, settings: INRConfig, *, resume: bool = False,
          overwrite: bool = False, quiet: bool = False, cache: str | os.PathLike | None = None) -> Path:
    """Train on the dHCP-layout cohort at ``data`` (test subjects held out); the run folder is ``out``
    (refused when it holds anything, unless ``resume`` continues the run there or ``overwrite``
    replaces it), the prepared-volume cache ``cache`` (default: in the run folder)."""
    distributed = setup(settings.device)
    try:
        training, test = split_test_subjects(read_dhcp(data), settings.split_seed)
        if not training:  # one subject, scanned twice or more: held out whole
            raise BrainkernelsError(f"{data}: too few subjects: the only one, {test[0]}, is held out to test "
                                    "predicting one session from another, which leaves no scans to train on; the "
                                    "INR needs at least two subjects")
        keys = latent_keys(training, settings.ssl, settings.flip)
        index = {key: position for position, key in enumerate(keys)}
        grid = model_grid(training, settings.dims)
        # The folder is claimed first: the cache lives in it by default.
        with claimed_run(out, distributed, settings, architecture_keys=ARCHITECTURE_KEYS, label="an INR run",
                         resume=resume, overwrite=overwrite, method_files=RUN_FILES) as run:
            if distributed.is_main:
                grid.save(run.root)
                with atomic_path(run.root / LATENTS_FILE) as temporary:
                    temporary.write_text(json.dumps(keys) + "\n")
            entries = prepared_entries([preparation_request(scan, grid) for scan in training],
                                       PreparedCache(cache_folder(cache, run.root)), distributed, quiet=quiet)
            names = [_latent_key(scan, settings.ssl) for scan in training]
            dataset = SampledVoxels(entries, training, grid, [index[name] for name in names], settings.pixel_ratio,
                                    settings.foreground_share,
                                    [index[name + MIRRORED] for name in names] if settings.flip else None)
            trainer = Trainer(
                method=METHOD, build_model=lambda: build_model(settings, len(keys)),
                build_optimizer=lambda parameters: torch.optim.AdamW(parameters, lr=settings.lr),
                loss_fn=reconstruction_loss(settings.sgla), dataset=dataset, config=settings,
                distributed=distributed, run=run, run_config=config.to_dict(settings),
                architecture_keys=ARCHITECTURE_KEYS, quiet=quiet,
                memory_advice="--micro-batches or lower --pixel-ratio",
            )
            trainer.fit(resume=resume)
        return run.root
    finally:
        teardown()


@dataclass(frozen=True)
class TrainedINR:
    """A trained run: the model (eval mode), its configuration, grid and latent names."""

    model: AutoDecoder
    settings: INRConfig
    grid: ModelGrid
    keys: tuple[str, ...]


def load_trained(run_dir: str | os.PathLike, device: torch.device | str = "cpu") -> TrainedINR:
    """The auto-decoder of an INR run folder (its latest checkpoint), with what describes it."""
    trained = load_trained_run(run_dir, INRConfig, method=METHOD, architecture_keys=ARCHITECTURE_KEYS,
                               label="an INR run")
    run, settings, latest, state = trained.run, trained.settings, trained.checkpoint, trained.model_state
    grid = ModelGrid.load(run.root)
    latents_path = run.root / LATENTS_FILE
    if not latents_path.is_file():
        raise BrainkernelsError(f"{latents_path}: no such file; {run.root} is not a finished INR run")
    keys = tuple(json.loads(latents_path.read_text()))
    model = build_model(settings, len(keys))
    expected = tuple(model.latents.weight.shape)
    found = tuple(state.get("latents.weight", torch.empty(0)).shape)
    if found != expected:
        raise BrainkernelsError(
            f"{latest}: latent table of shape {found}, but the run ({len(keys)} latents of size "
            f"{settings.latent_size}, plus the global one) needs {expected}")
    model.load_state_dict(state)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return TrainedINR(model.to(device).eval(), settings, grid, keys)
