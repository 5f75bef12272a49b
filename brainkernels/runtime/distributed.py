"""Process groups under torchrun: gloo on the CPU, NCCL on GPUs; one process is also fine.

Only rank 0 writes files and shows progress; data and cohorts are sharded by rank.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from brainkernels.errors import BrainkernelsError

Item = TypeVar("Item")


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def raise_from_main(self, error: Exception | None) -> None:
        """Raise rank 0's ``error`` (None: there was none) on every rank, so that no rank waits
        forever for one that has stopped."""
        if self.active:
            shared = [None if error is None else str(error)]
            dist.broadcast_object_list(shared, src=0)
            if error is None and shared[0] is not None:
                error = BrainkernelsError(shared[0])
        if error is not None:
            raise error

    def mean(self, value: float) -> float:
        """The mean of ``value`` over all ranks."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.item() / self.world_size

    def shard(self, items: Sequence[Item]) -> list[Item]:
        """This rank's share of ``items`` (every world_size-th item, from its rank)."""
        return list(items[self.rank :: self.world_size])


def is_main_process() -> bool:
    """Whether this process is rank 0 of a torchrun job, or runs alone; read from torchrun's
    environment, so it holds before ``setup`` and after ``teardown`` too."""
    return int(os.environ.get("RANK", "0")) == 0


def pick_device(choice: str, local_rank: int = 0) -> torch.device:
    if choice not in ("auto", "cpu", "cuda"):
        raise BrainkernelsError(f"device must be auto, cpu or cuda; got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise BrainkernelsError("device 'cuda' was asked for but no CUDA device is available (use --device cpu)")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def setup(device_choice: str = "auto") -> Distributed:
    """Join the torchrun process group if there is one (WORLD_SIZE > 1), else run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(device_choice, int(os.environ.get("LOCAL_RANK", "0")))
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return Distributed(rank, world_size, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
