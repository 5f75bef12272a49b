"""Trained models shipped inside the package, and the export that makes one from a run folder.

A shipped model is a run folder reduced to what inference reads: ``config.toml``, one checkpoint
holding the model's weights only (no optimiser state, so it is about a third of a training
checkpoint) and the files the method adds to a run, plus ``card.toml``, its model card: how it was
trained (command, seeds, cohort, time, hardware) and what it reaches. A method lists its shipped
models in the folder its config class names in ``MODELS``; ``--model builtin:NAME`` loads one.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from brainkernels.errors import BrainkernelsError
from brainkernels.runtime import checkpoint
from brainkernels.runtime.run_folder import RunFolder

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PREFIX = "builtin:"
CARD = "card.toml"
CARD_KEYS = ("name", "method", "summary", "intended_use", "training", "metrics")
"""What every model card holds: ``training`` (command, cohort, seeds, wall time, hardware) and
``metrics`` (each with the held-out cohort it was measured on, its value and the tolerance the
regression test allows) are tables."""


def shipped_models(config_class: type) -> dict[str, Path]:
    """The models shipped with ``config_class``'s method: name -> folder."""
    folder = getattr(config_class, "MODELS", None)
    if folder is None or not folder.is_dir():
        return {}
    return {path.name: path for path in sorted(folder.iterdir()) if (path / CARD).is_file()}


def resolve(run_dir: str | os.PathLike, config_class: type) -> Path:
    """The folder of ``builtin:NAME``, or ``run_dir`` itself."""
    text = str(run_dir)
    if not text.startswith(PREFIX):
        return Path(run_dir)
    name, models = text.removeprefix(PREFIX), shipped_models(config_class)
    if name not in models:
        raise BrainkernelsError(f"--model {text}: no such shipped model (shipped: {', '.join(models) or 'none'})")
    return models[name]


def read_card(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / CARD
    try:
        card = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise BrainkernelsError(f"{path}: not a readable model card ({error})") from None
    missing = [key for key in CARD_KEYS if key not in card]
    if missing:
        raise BrainkernelsError(f"{path}: the model card has no '{missing[0]}'")
    return card


def export(run_dir: str | os.PathLike, out: str | os.PathLike, *, method: str,
           method_files: tuple[str, ...]) -> Path:
    """Write the run at ``run_dir`` reduced to what inference reads into the new folder ``out``:
    its config, its latest checkpoint's weights, and the ``method_files`` (patterns relative to the
    run folder). ``out`` appears complete or not at all."""
    run, out = RunFolder(run_dir), Path(out)
    if out.exists():
        raise BrainkernelsError(f"--out {out}: already exists; give a new folder")
    latest = checkpoint.latest_checkpoint(run.checkpoints)
    if not run.config.is_file() or latest is None:
        raise BrainkernelsError(f"--model {run.root}: not a run folder with a checkpoint")
    payload = checkpoint.load_checkpoint(latest, method=method)
    weights = {**payload, "optimizer": None, "scaler": None, "rng": None}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        exported = RunFolder(staging)
        exported.checkpoints.mkdir()
        checkpoint.save_atomically(weights, exported.checkpoints / latest.name)
        for source in [run.config, *(path for pattern in method_files for path in sorted(run.root.glob(pattern)))]:
            target = staging / source.relative_to(run.root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        staging.chmod(0o777 & ~_umask())
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def evaluation_folder(run_dir: str | os.PathLike, out: str | os.PathLike | None) -> Path:
    """``out``, by default the run folder's ``evaluation/``; a shipped model's folder belongs to the
    installed package, so evaluating one needs ``out``."""
    if out is not None:
        return Path(out)
    if str(run_dir).startswith(PREFIX):
        raise BrainkernelsError(f"--out: needed with the shipped model {run_dir} (its folder is part of the "
                                "installed package)")
    return Path(run_dir) / "evaluation"
