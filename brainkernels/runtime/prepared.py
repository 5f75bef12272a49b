"""Prepared-volume cache entries for a cohort, built once with a progress bar: under torchrun
rank 0 builds what is missing while the other ranks wait for it (and stop with its error), then
every rank maps the same entries (they need every volume, since the data order is shuffled over
the whole cohort)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from brainkernels.data.cache import Entry, PreparedCache, Request
from brainkernels.errors import BrainkernelsError
from brainkernels.runtime.distributed import Distributed
from brainkernels.runtime.progress import progress

CACHE_FOLDER = "cache"
"""The cache's folder inside a run folder when the user names none."""


def cache_folder(cache: str | os.PathLike | None, run_root: Path) -> Path:
    return Path(cache) if cache is not None else run_root / CACHE_FOLDER


def inference_cache_folder(cache: str | os.PathLike | None, run_root: Path, out: Path) -> Path:
    """The cache of cohort inference with the run at ``run_root`` into ``out``: ``cache`` when
    named; else the run's own, so that inference reads what training built (an entry depends
    only on its sources and settings); else one in ``out`` (a run trained with ``--cache``
    elsewhere, an exported run, a shipped model, whose folder is never written to)."""
    if cache is not None:
        return Path(cache)
    if (run_root / CACHE_FOLDER).is_dir():
        return run_root / CACHE_FOLDER
    return out / CACHE_FOLDER


def prepared_entries(requests: Sequence[Request], cache: PreparedCache, distributed: Distributed, *,
                     quiet: bool = False) -> list[Entry]:
    """The entries of ``requests`` in order, building the missing and stale ones on rank 0."""
    failure = None
    if distributed.is_main:
        missing = [request for request in requests if cache.lookup(request) is None]
        try:
            for request in progress(missing, desc=f"preparing volumes in {cache.root}", quiet=quiet):
                cache.build(request)
        except (BrainkernelsError, OSError, ValueError) as error:  # a bad scan, a full disk
            failure = error
    distributed.raise_from_main(failure)  # the other ranks stop too, rather than wait for entries
    entries = [cache.lookup(request) for request in requests]
    if None in entries:
        request = requests[entries.index(None)]
        raise BrainkernelsError(f"{cache.root}: the prepared entry of {', '.join(map(str, request.sources))} is "
                                "missing after rank 0 built it (is the cache folder shared by every process?)")
    return entries
