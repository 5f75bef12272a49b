"""The training loop shared by all methods: DDP, mixed precision, gradient accumulation,
reproducible seeding, periodic evaluation, metrics, atomic checkpoints and resume.

Samples are loaded by ``workers`` processes (pinned memory on a GPU, micro-batches prepared
ahead). Each sample's randomness (patch positions, sampled voxels) comes from torch's generator
seeded for that sample from (seed, epoch, its position in the epoch's order), so the sample stream
is a function of the seed and the step alone: the same with any number of workers or processes,
and after a resume.

A method supplies a model factory, an optimiser factory, a loss function
``loss_fn(model, batch) -> scalar`` and a map-style dataset. Every optimiser step uses
``batch_size`` samples in total, split evenly over the ranks and, on each rank, into
``micro_batches`` forward/backward passes; the gradient equals that of one pass over the whole
batch, so 1 process and N processes give the same training (to rounding).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from brainkernels.errors import BrainkernelsError
from brainkernels.memory import StorageTracker, format_bytes
from brainkernels.runtime import checkpoint
from brainkernels.runtime.config import renamed_keys
from brainkernels.runtime.distributed import Distributed
from brainkernels.runtime.loader_workers import prepare_worker_start
from brainkernels.runtime.loss_curve import write_loss_curve
from brainkernels.runtime.progress import progress
from brainkernels.runtime.run_folder import RunFolder

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_WORKERS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
PREFETCH_MICRO_BATCHES = 2
"""Micro-batches each worker keeps ready."""


@dataclass(frozen=True)
class TrainerConfig:
    steps: int = field(default=1000, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=8, metadata={"help": "samples per optimiser step, over all processes"})
    micro_batches: int = field(default=1, metadata={"help": "forward/backward passes per step and process "
                                                             "(more: less memory, same result)"})
    precision: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={"help": "mixed precision"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={"help": "where to train"})
    seed: int = field(default=0, metadata={"help": "seed for weights, data order and sampling"})
    log_every: int = field(default=10, metadata={"help": "steps between metrics rows"})
    eval_every: int = field(default=0, metadata={"help": "steps between evaluations (0: only at the end)"})
    checkpoint_every: int = field(default=100, metadata={"help": "steps between checkpoints"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many recent checkpoints to keep"})
    workers: int = field(default=DEFAULT_WORKERS, metadata={"help": "data-loading processes per training process "
                                                                    "(0: load in the training process; the "
                                                                    "result is the same)"})

    def __post_init__(self) -> None:
        self.require_at_least(1, "steps", "batch_size", "micro_batches", "log_every", "checkpoint_every",
                              "keep_checkpoints")
        self.require_at_least(0, "eval_every", "workers")

    def require_at_least(self, minimum: int, *names: str) -> None:
        """A method's configuration checks its counts with this: every count has a lower bound."""
        for name in names:
            if getattr(self, name) < minimum:
                raise ValueError(f"key '{name}' must be at least {minimum}; got {getattr(self, name)}")

    def require_positive(self, *names: str) -> None:
        """Finite and above zero (a learning rate of nan or -1 trains nothing)."""
        for name in names:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"key '{name}' must be a finite number above 0; got {value}")


def micro_batch_size(config: TrainerConfig, distributed: Distributed) -> int:
    """Samples per micro-batch on each rank; a batch that does not split evenly is refused."""
    per_rank, remainder = divmod(config.batch_size, distributed.world_size * config.micro_batches)
    if remainder or per_rank == 0:
        raise BrainkernelsError(f"batch_size {config.batch_size} must be a multiple of processes x micro_batches "
                                f"({distributed.world_size} x {config.micro_batches})")
    return per_rank


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of the sample at ``position`` of epoch ``epoch``'s order (over all processes)."""
    entropy = [seed % 2**64, epoch, position]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


class SeededSamples(Dataset):
    """``dataset[index]`` for a key ``(index, seed)``, drawn with torch's generator seeded by
    ``seed``; the generator's state outside is left as it was."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed would also reseed an initialised GPU's.
            torch.default_generator.manual_seed(seed)
            return self.dataset[index]


def _to_device(batch: Any, device: torch.device) -> Any:
    return torch.utils._pytree.tree_map(
        lambda value: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value, batch
    )


@dataclass
class Trainer:
    """Trains ``build_model()`` for ``config.steps`` steps; ``fit()`` returns the trained model."""

    method: str
    build_model: Callable[[], nn.Module]
    build_optimizer: Callable[[Any], torch.optim.Optimizer]
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]
    dataset: Dataset
    config: TrainerConfig
    distributed: Distributed
    run: RunFolder | None = None
    run_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    architecture_keys: tuple[str, ...] = ()
    evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None
    memory_advice: str = "--micro-batches (more passes per step) or --batch-size"
    quiet: bool = False

    def __post_init__(self) -> None:
        self.micro_batch_size = per_rank = micro_batch_size(self.config, self.distributed)
        self.sampler = DistributedSampler(self.dataset, num_replicas=self.distributed.world_size,
                                          rank=self.distributed.rank, shuffle=True, seed=self.config.seed,
                                          drop_last=True)
        self.steps_per_epoch = len(self.sampler) // (per_rank * self.config.micro_batches)
        if self.steps_per_epoch == 0:
            raise BrainkernelsError(f"the dataset has {len(self.dataset)} samples, fewer than batch_size "
                                    f"{self.config.batch_size}")
        self.peak_bytes = 0

    def _keys(self, start_step: int) -> Iterator[list[tuple[int, int]]]:
        """The micro-batches of every step from ``start_step`` on, as (index, sample seed) keys."""
        size, world, rank = self.micro_batch_size, self.distributed.world_size, self.distributed.rank
        per_epoch = self.steps_per_epoch * self.config.micro_batches * size
        step = start_step
        while True:
            epoch, offset = divmod(step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch)
            indices = list(self.sampler)
            for first in range(offset * self.config.micro_batches * size, per_epoch, size):
                # Rank r holds positions r, r + world, ... of the epoch's order (DistributedSampler).
                yield [(indices[local], sample_seed(self.config.seed, epoch, rank + world * local))
                       for local in range(first, first + size)]
            step = (epoch + 1) * self.steps_per_epoch

    def batches(self, start_step: int, device: torch.device) -> Iterator[list[Any]]:
        """The micro-batches of every step from ``start_step`` on, in a resumable order."""
        workers = self.config.workers
        prepare_worker_start(workers)
        # One loader for the whole run, so its workers live as long as the run (as persistent
        # workers would across epochs). A private generator: creating a loader must not draw from
        # the global RNG, or a resumed run (which creates one mid-epoch) would drift.
        loader = DataLoader(SeededSamples(self.dataset), batch_sampler=self._keys(start_step),
                            num_workers=workers, pin_memory=device.type == "cuda",
                            prefetch_factor=PREFETCH_MICRO_BATCHES if workers else None,
                            generator=torch.Generator().manual_seed(self.config.seed))
        iterator = iter(loader)
        while True:
            yield [next(iterator) for _ in range(self.config.micro_batches)]

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        dtype = AUTOCAST_DTYPES.get(self.config.precision)
        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def _measure(self, device: torch.device, measure: bool) -> contextlib.AbstractContextManager:
        if not measure or device.type == "cuda":
            return contextlib.nullcontext()
        return StorageTracker()

    def _step(self, model: nn.Module, optimizer, scaler, micro_batches: list[Any], device, measure: bool) -> float:
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        if device.type == "cuda" and measure:
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
        with self._measure(device, measure) as tracker:
            for index, batch in enumerate(micro_batches):
                last = index == len(micro_batches) - 1
                sync = (contextlib.nullcontext() if last or not isinstance(model, DistributedDataParallel)
                        else model.no_sync())
                with sync:
                    with self._autocast(device):
                        loss = self.loss_fn(model, _to_device(batch, device)) / len(micro_batches)
                    scaler.scale(loss).backward()
                total += loss.item()
            scaler.step(optimizer)
            scaler.update()
        if measure:
            step_peak = (torch.cuda.max_memory_allocated(device) - baseline if device.type == "cuda"
                         else tracker.peak_bytes)
            self.peak_bytes = max(self.peak_bytes, step_peak)
        return total

    def _out_of_memory(self, error: Exception) -> BrainkernelsError:
        return BrainkernelsError(
            f"out of GPU memory while training {self.method} (batch_size={self.config.batch_size}, "
            f"micro_batches={self.config.micro_batches}, {self.micro_batch_size} samples per pass, "
            f"precision={self.config.precision}); peak measured so far {format_bytes(self.peak_bytes)}. "
            f"To use less memory, raise {self.memory_advice}. ({str(error).splitlines()[0]})")

    def fit(self, resume: bool = False) -> nn.Module:
        distributed, config = self.distributed, self.config
        device = distributed.device
        seed_everything(config.seed)
        model = self.build_model().to(device)
        optimizer = self.build_optimizer(model.parameters())
        scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
        if config.precision == "fp16" and device.type == "cpu" and distributed.is_main:
            # A 64^3 step of the PatchDDM paper's network: 11 minutes in fp16, seconds in fp32.
            print("precision fp16 on the CPU: PyTorch has no fast float16 convolutions there, so training is many "
                  "times slower than in fp32; use --precision fp32, or bf16 on a CPU with AVX512-BF16 or AMX",
                  file=sys.stderr)
        start = 0
        if self.run is not None and distributed.is_main:
            checkpoint.remove_partial_checkpoints(self.run.checkpoints)
        distributed.barrier()
        if resume and self.run is not None and (latest := checkpoint.latest_checkpoint(self.run.checkpoints)):
            # Loaded to the CPU: the random-generator states must stay CPU tensors (mapped to a GPU,
            # resuming there failed); load_state_dict moves weights and optimiser state to the model.
            state = checkpoint.load_checkpoint(latest, method=self.method, config=self.run_config,
                                               architecture_keys=self.architecture_keys,
                                               renamed=renamed_keys(type(self.config)))
            model.load_state_dict(state["model"])
            if state["optimizer"] is None:
                # An exported (shipped) model keeps its weights only: fine-tuning it starts the
                # optimiser's moments and the random streams afresh.
                if distributed.is_main:
                    print(f"{latest}: weights only (an exported model); training continues from them "
                          f"with a new optimiser state", file=sys.stderr)
            else:
                configured = [{key: value for key, value in group.items() if key != "params"}
                              for group in optimizer.param_groups]
                optimizer.load_state_dict(state["optimizer"])
                # The optimiser's moments resume; its settings (a new --lr, say) are the ones given now.
                for group, settings in zip(optimizer.param_groups, configured):
                    group.update(settings)
            if state["scaler"] is not None:
                scaler.load_state_dict(state["scaler"])
            if state["rng"] is not None:
                checkpoint.restore_rng(state["rng"])
            start = state["step"]
        if resume and self.run is not None and distributed.is_main:
            # Rows after the checkpoint (or all, when the run died before its first) are redone.
            self.run.truncate_metrics(start)
        trained = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
            if distributed.active else model
        bar = progress(total=config.steps, initial=start, desc=f"{self.method} training", quiet=self.quiet,
                       main=distributed.is_main)
        batches = self.batches(start, device)
        started, samples = time.perf_counter(), 0
        try:
            for step in range(start + 1, config.steps + 1):
                trained.train()
                measure = step % config.log_every == 0 or step == start + 1
                loss = self._step(trained, optimizer, scaler, next(batches), device, measure)
                samples += config.batch_size
                bar.update(1)
                if step % config.log_every == 0 or step == config.steps:
                    self._log(step, distributed.mean(loss), optimizer, samples / (time.perf_counter() - started), bar)
                if self.evaluate is not None and ((config.eval_every and step % config.eval_every == 0)
                                                  or step == config.steps):
                    self._evaluate(model, step)
                if step % config.checkpoint_every == 0 or step == config.steps:
                    self._checkpoint(model, optimizer, scaler, step)
        except torch.OutOfMemoryError as error:
            raise self._out_of_memory(error) from None
        finally:
            batches.close()  # stops the loader's workers
            bar.close()
        if distributed.is_main and self.run is not None:
            write_loss_curve(self.run, self.method)
        return model

    def _log(self, step: int, loss: float, optimizer, throughput: float, bar) -> None:
        row = {"step": step, "loss": loss, "lr": optimizer.param_groups[0]["lr"],
               "samples_per_s": throughput, "peak_bytes": self.peak_bytes}
        bar.set_postfix(loss=f"{loss:.4g}")
        if self.distributed.is_main and self.run is not None:
            self.run.append_metrics(row)

    def _evaluate(self, model: nn.Module, step: int) -> None:
        if self.distributed.is_main:
            model.eval()
            with torch.no_grad():
                results = self.evaluate(model, step)
            if self.run is not None:
                self.run.append_metrics({"step": step, **{f"eval/{key}": value for key, value in results.items()}})
        self.distributed.barrier()

    def _checkpoint(self, model: nn.Module, optimizer, scaler, step: int) -> None:
        if self.distributed.is_main and self.run is not None:
            checkpoint.save_checkpoint(self.run.checkpoints / checkpoint.checkpoint_name(step), method=self.method,
                                       config=self.run_config, step=step, model=model, optimizer=optimizer,
                                       scaler=scaler if scaler.is_enabled() else None)
            checkpoint.prune_checkpoints(self.run.checkpoints, self.config.keep_checkpoints)
        self.distributed.barrier()
