"""Cohort inference sharded over the ranks of a torchrun job, with a progress bar on rank 0; the
inputs of the next items load in worker processes while the model works on the current one."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from brainkernels.errors import BrainkernelsError
from brainkernels.runtime.distributed import Distributed
from brainkernels.runtime.loader_workers import prepare_worker_start
from brainkernels.runtime.progress import progress

Item = TypeVar("Item")
Result = TypeVar("Result")

EVALUATED_SUBJECTS = ("held-out", "all")
"""What an ``evaluate`` scores of its cohort: the subjects the run's split kept out of training, or
all of them (a cohort the model never saw)."""


def evaluated(everyone: Sequence[Item], held_out: Sequence[Item], subjects: str) -> list[Item]:
    if subjects not in EVALUATED_SUBJECTS:
        raise BrainkernelsError(f"--subjects must be one of {', '.join(EVALUATED_SUBJECTS)}; got {subjects!r}")
    return list(held_out if subjects == "held-out" else everyone)


@dataclass(frozen=True)
class _Failed:
    """An error raised by ``load`` in a worker, raised again as it was in the main process (the
    loader would wrap it in a multi-line message with the worker's traceback)."""

    error: Exception


class _Loaded(Dataset):
    def __init__(self, items: Sequence, load: Callable) -> None:
        self.items, self.load = items, load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.load(self.items[index])
        except Exception as error:  # noqa: BLE001 - handed to the main process whatever it is
            return _Failed(error)


def _as_is(loaded: Any) -> Any:
    return loaded


def _inputs(items: Sequence, load: Callable | None, workers: int) -> Iterable:
    if load is None:
        return items
    prepare_worker_start(workers)
    # One item ahead per worker: an item's inputs are whole volumes.
    return DataLoader(_Loaded(items, load), batch_size=None, collate_fn=_as_is, num_workers=workers,
                      prefetch_factor=1 if workers else None)


def run_cohort(items: Sequence[Item], infer: Callable[[Any], Result], distributed: Distributed, *,
               description: str, load: Callable[[Item], Any] | None = None, workers: int = 0, sizes: str = "",
               advice: str = "", quiet: bool = False) -> list[Result]:
    """Apply ``infer`` to this rank's share of ``items``; every rank gets all results, in item order.

    With ``load``, ``infer`` gets ``load(item)`` (an item's prepared inputs), computed in
    ``workers`` loader processes ahead of time (0: in this process, just before ``infer``).
    ``sizes`` and ``advice`` go into the message of a GPU out-of-memory error (what was configured,
    and which option lowers memory).
    """
    mine = distributed.shard(items)
    results = []
    inputs = _inputs(mine, load, workers)
    for item, loaded in progress(zip(mine, inputs), total=len(mine), desc=description, quiet=quiet,
                                 main=distributed.is_main):
        if isinstance(loaded, _Failed):
            raise loaded.error
        try:
            results.append(infer(loaded))
        except torch.OutOfMemoryError as error:
            peak = torch.cuda.max_memory_allocated(distributed.device) if distributed.device.type == "cuda" else 0
            raise BrainkernelsError(
                f"out of GPU memory during {description} of {item!s} ({sizes}); peak so far {peak / 2**30:.2f} GiB. "
                f"{advice} ({str(error).splitlines()[0]})") from None
    if not distributed.active:
        return results
    gathered: list[list[Result] | None] = [None] * distributed.world_size
    dist.all_gather_object(gathered, results)
    # Rank r holds items r, r + world, ...: interleave back into item order.
    ordered = [None] * len(items)
    for rank, shard in enumerate(gathered):
        ordered[rank::distributed.world_size] = shard
    return ordered
