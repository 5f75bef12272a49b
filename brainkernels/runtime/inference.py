"""Cohort inference sharded over the ranks of a torchrun job, with a progress bar on rank 0."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from brainkernels.errors import BrainkernelsError
from brainkernels.runtime.distributed import Distributed
from brainkernels.runtime.progress import progress

Item = TypeVar("Item")
Result = TypeVar("Result")


def run_cohort(items: Sequence[Item], infer: Callable[[Item], Result], distributed: Distributed, *,
               description: str, sizes: str = "", advice: str = "", quiet: bool = False) -> list[Result]:
    """Apply ``infer`` to this rank's share of ``items``; every rank gets all results, in item order.

    ``sizes`` and ``advice`` go into the message of a GPU out-of-memory error (what was configured,
    and which option lowers memory).
    """
    mine = distributed.shard(items)
    results = []
    for item in progress(mine, desc=description, quiet=quiet, main=distributed.is_main):
        try:
            results.append(infer(item))
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
