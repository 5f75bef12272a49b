"""Starting a training run in a folder: every check before anything is written, the folder held
(locked) for the run's life, and the resolved configuration written first."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from brainkernels.errors import BrainkernelsError
from brainkernels.runtime import config
from brainkernels.runtime.distributed import Distributed
from brainkernels.runtime.run_folder import RunFolder
from brainkernels.runtime.trainer import micro_batch_size


def check_resumable(run: RunFolder, config_class: type, settings: Any, *, architecture_keys: tuple[str, ...],
                    label: str) -> None:
    """Refuse to resume the run in ``run`` with ``settings`` when it is not ``label`` ("a PPR run")
    or its architecture differs; a folder without a config holds no run and starts a new one."""
    if not run.config.is_file():
        return
    try:
        previous = config.to_dict(config.load_config(config_class, run.config))
    except BrainkernelsError as error:
        raise BrainkernelsError(f"{run.root}: cannot resume: not {label} ({error})") from None
    now = config.to_dict(settings)
    differing = [key for key in architecture_keys if previous[key] != now[key]]
    if differing:
        details = ", ".join(f"{key}={previous[key]!r} in the run but {now[key]!r} now" for key in differing)
        raise BrainkernelsError(f"{run.root}: cannot resume: {details}; give the run's settings, or --overwrite to "
                                "replace the run")


@contextlib.contextmanager
def claimed_run(out: str | os.PathLike, distributed: Distributed, settings: Any, *, architecture_keys: tuple[str, ...],
                label: str, resume: bool, overwrite: bool, method_files: tuple[str, ...] = ()) -> Iterator[RunFolder]:
    """The run folder ``out`` held for this run, with ``settings`` written to its config.toml. Under
    torchrun only rank 0 checks, locks and writes; the other ranks wait for it, and stop with its
    error when it refuses the folder."""
    micro_batch_size(settings, distributed)  # the batching check needs no data: before anything is written
    run = RunFolder(out)
    with contextlib.ExitStack() as held:
        refusal = None
        if distributed.is_main:
            try:
                if resume:
                    check_resumable(run, type(settings), settings, architecture_keys=architecture_keys, label=label)
                held.enter_context(run.claimed(resume=resume, overwrite=overwrite, method_files=method_files))
                config.write_toml(settings, run.config)
            except (BrainkernelsError, OSError) as error:
                refusal = error
        distributed.raise_from_main(refusal)
        yield run
