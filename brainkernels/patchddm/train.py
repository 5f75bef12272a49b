"""Training PatchDDM (patch mode) or its baselines FullRes / HalfRes on a BraTS-layout cohort."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brainkernels.data.cache import PreparedCache
from brainkernels.data.layouts.brats import check_subjects, read_brats
from brainkernels.data.layouts.splits import split_by_subject
from brainkernels.diffusion.process import Diffusion
from brainkernels.diffusion.unet import PAPER_CHANNEL_MULT, PAPER_CHANNELS, RECOMPUTE, DiffusionUNet, Recompute
from brainkernels.errors import BrainkernelsError
from brainkernels.patchddm.data import MODES, Mode, TrainingSamples, preparation_request
from brainkernels.runtime import Trainer, TrainerConfig, config, setup, teardown
from brainkernels.runtime.claim import claimed_run
from brainkernels.runtime.prepared import cache_folder, prepared_entries
from brainkernels.runtime.trained import load_trained_run

METHOD = "patchddm"
ARCHITECTURE_KEYS = ("mode", "channels", "channel_mult", "blocks", "diffusion_steps")
RUN_FILES: tuple[str, ...] = ()  # a PatchDDM run writes only what every run writes
SPLIT = (0.8, 0.1, 0.1)  # train / validation / test, as the paper
MR_CHANNELS, COORDINATE_CHANNELS = 4, 3


@dataclass(frozen=True)
class PatchDDMConfig(TrainerConfig):
    PRESETS: ClassVar[Path] = Path(__file__).with_name("presets")  # --config paper, small
    MODELS: ClassVar[Path] = Path(__file__).with_name("models")  # --model builtin:NAME
    mode: Mode = field(default="patch", metadata={"help": "patch (PatchDDM), full (FullRes) or half (HalfRes)"})
    patch: int = field(default=128, metadata={"help": "patch edge in voxels (patch mode)"})
    channels: int = field(default=PAPER_CHANNELS, metadata={"help": "U-Net base channels (also the GroupNorm groups)"})
    channel_mult: tuple[int, ...] = field(default=PAPER_CHANNEL_MULT,
                                          metadata={"help": "channel multiplier per level, e.g. 1,3,4,4,4,4,4"})
    blocks: int = field(default=2, metadata={"help": "residual blocks per level"})
    diffusion_steps: int = field(default=1000, metadata={"help": "diffusion steps T"})
    recompute: Recompute = field(default="none", metadata={
        "help": "recompute activations in backward to save memory: none; blocks (each residual block, ~0.9 forward "
                "passes more per step); all (each block and each level's sub-network, ~1.5 more: a FullRes step at "
                "256^3 in bf16 holds 11.8 GB of tensors instead of 20.7)"})
    lr: float = field(default=1e-5, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (0.01, PyTorch's default, as the "
                                                                "thesis says; the paper's code: 0)"})
    batch_size: int = field(default=1, metadata={"help": "samples per optimiser step"})
    steps: int = field(default=1000, metadata={"help": "optimiser steps"})
    split_seed: int = field(default=0, metadata={"help": "seed of the train/validation/test split"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"key 'recompute' must be one of {', '.join(RECOMPUTE)}; got {self.recompute!r}")
        if self.mode not in MODES:
            raise ValueError(f"key 'mode' must be one of {', '.join(MODES)}; got {self.mode!r}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"key 'channel_mult' must be positive ints; got {self.channel_mult!r}")
        self.require_at_least(1, "channels", "blocks", "diffusion_steps")
        self.require_positive("lr")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"key 'weight_decay' must be a finite number of at least 0; got {self.weight_decay}")
        if self.patch < 1 or self.patch % self.size_multiple:
            raise ValueError(f"key 'patch' must be a positive multiple of {self.size_multiple} "
                             f"(2^(levels - 1) for {len(self.channel_mult)} levels); got {self.patch}")

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def volume_multiple(self) -> int:
        """Volumes are padded to multiples of this: half mode halves them first."""
        return self.size_multiple * (2 if self.mode == "half" else 1)


def build_model(settings: PatchDDMConfig, *, fused: bool = True) -> DiffusionUNet:
    """The U-Net; its input is x_t, the four MR sequences and, in patch mode, the coordinates."""
    in_channels = 1 + MR_CHANNELS + (COORDINATE_CHANNELS if settings.mode == "patch" else 0)
    return DiffusionUNet(in_channels, 1, settings.channels, settings.channel_mult, settings.blocks, fused=fused,
                         recompute=settings.recompute)


def split_subjects(subjects: list, seed: int) -> tuple[list, list, list]:
    """(train, validation, test) subjects, split by id."""
    split = split_by_subject([s.subject_id for s in subjects], SPLIT, seed)
    return tuple([s for s in subjects if s.subject_id in part] for part in (split.train, split.validation, split.test))


def noise_prediction_loss(diffusion: Diffusion):
    """The epsilon-prediction MSE of a batch at uniformly drawn timesteps."""

    def loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        x0 = batch["mask"]
        t = diffusion.sample_timesteps(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        predicted = model(torch.cat([diffusion.add_noise(x0, t, noise), batch["condition"]], dim=1), t)
        return F.mse_loss(predicted.float(), noise)

    return loss


def train(data: str | os.PathLike, out: str | os.PathLike, settings: PatchDDMConfig, *, resume: bool = False,
          overwrite: bool = False, quiet: bool = False, cache: str | os.PathLike | None = None) -> Path:
    """Train on the training split of the BraTS-layout cohort at ``data``; the run folder is ``out``
    (refused when it holds anything, unless ``resume`` continues the run there or ``overwrite``
    replaces it), the prepared-volume cache ``cache`` (default: in the run folder)."""
    distributed = setup(settings.device)
    try:
        training, _, _ = split_subjects(read_brats(data), settings.split_seed)
        if not training:
            raise BrainkernelsError(f"{data}: too few subjects for a training split")
        check_subjects(training)
        # The folder is claimed first: the cache lives in it by default.
        with claimed_run(out, distributed, settings, architecture_keys=ARCHITECTURE_KEYS, label="a PatchDDM run",
                         resume=resume, overwrite=overwrite) as run:
            requests = [preparation_request(subject, settings.volume_multiple, with_mask=True)
                        for subject in training]
            entries = prepared_entries(requests, PreparedCache(cache_folder(cache, run.root)), distributed,
                                       quiet=quiet)
            dataset = TrainingSamples(entries, settings.mode, settings.patch)
            trainer = Trainer(
                method=METHOD, build_model=lambda: build_model(settings),
                build_optimizer=lambda parameters: torch.optim.AdamW(parameters, lr=settings.lr,
                                                                    weight_decay=settings.weight_decay),
                loss_fn=noise_prediction_loss(Diffusion(settings.diffusion_steps)), dataset=dataset, config=settings,
                distributed=distributed, run=run, run_config=config.to_dict(settings),
                architecture_keys=ARCHITECTURE_KEYS, quiet=quiet,
                memory_advice="--precision bf16, --patch or --mode patch",
            )
            trainer.fit(resume=resume)
        return run.root
    finally:
        teardown()


def load_trained(run_dir: str | os.PathLike,
                 device: torch.device | str = "cpu") -> tuple[DiffusionUNet, PatchDDMConfig]:
    """The model of a PatchDDM run folder (its latest checkpoint) and the run's configuration."""
    trained = load_trained_run(run_dir, PatchDDMConfig, method=METHOD, architecture_keys=ARCHITECTURE_KEYS,
                               label="a PatchDDM run")
    model = build_model(trained.settings)
    model.load_state_dict(trained.model_state)
    return model.to(device).eval(), trained.settings
