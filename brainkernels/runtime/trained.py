"""What a finished (or interrupted) training run left behind: its configuration and the model
weights of its latest checkpoint, both checked against the method that loads them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainkernels.errors import BrainkernelsError
from brainkernels.runtime import checkpoint, config, shipped
from brainkernels.runtime.run_folder import RunFolder


@dataclass(frozen=True)
class TrainedRun:
    run: RunFolder
    settings: Any
    checkpoint: Path
    model_state: dict[str, Any]


def load_trained_run(run_dir: str | os.PathLike, config_class: type, *, method: str,
                     architecture_keys: tuple[str, ...], label: str) -> TrainedRun:
    """The run folder at ``run_dir`` (or the shipped model ``builtin:NAME``), its ``config_class``
    settings and its latest checkpoint's model weights; ``label`` names the method in errors ("a
    PPR run")."""
    run = RunFolder(shipped.resolve(run_dir, config_class))
    if not run.config.is_file():
        raise BrainkernelsError(f"{run.root}: not a run folder (no config.toml)")
    try:
        settings = config.load_config(config_class, run.config)
    except BrainkernelsError as error:
        raise BrainkernelsError(f"{run.root}: not {label} ({error})") from None
    latest = checkpoint.latest_checkpoint(run.checkpoints)
    if latest is None:
        raise BrainkernelsError(f"{run.root}: the run has no checkpoint yet")
    state = checkpoint.load_checkpoint(latest, method=method, config=config.to_dict(settings),
                                       architecture_keys=architecture_keys,
                                       renamed=config.renamed_keys(config_class))
    return TrainedRun(run, settings, latest, state["model"])
