"""Training checkpoints: written atomically, loaded with ``weights_only=True``, and checked
against the method and architecture of the run that loads them.

A checkpoint holds plain tensors, numbers, strings, lists and dicts only, so loading one from
an untrusted source cannot run code.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainkernels.atomic import atomic_path
from brainkernels.errors import BrainkernelsError

FORMAT = "brainkernels-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.pt"


def rng_state() -> dict[str, Any]:
    """Every random generator a training step may draw from, as checkpointable values."""
    numpy_state = np.random.get_state()
    python_version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "position": int(numpy_state[2]),
                  "has_gauss": int(numpy_state[3]), "gauss": float(numpy_state[4])},
        "python": {"version": python_version, "state": list(python_state), "gauss": python_gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["gauss"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))


def save_checkpoint(path: Path, *, method: str, config: dict[str, Any], step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> Path:
    """Write a complete checkpoint; ``path`` appears only once every byte is on disk."""
    payload = {
        "format": FORMAT, "version": VERSION, "method": method, "config": config, "step": step,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state(),
    }
    save_atomically(payload, path)
    return path


def save_atomically(payload: Any, path: Path) -> None:
    """``torch.save`` whose file appears only once complete, and whose full disk is an OSError."""
    # Through a Python file: torch.save to a path reports a full disk as "unexpected pos", not ENOSPC.
    with atomic_path(path) as temporary, temporary.open("wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: Path, *, method: str, config: dict[str, Any] | None = None,
                    architecture_keys: tuple[str, ...] = (), renamed: dict[str, str] | None = None) -> dict[str, Any]:
    """Load and check a checkpoint: refused when it is not ours, from another method, or from a
    model whose architecture keys differ from ``config``. ``renamed``: former key -> current key
    (``config.renamed_keys``), for checkpoints written before a key was renamed."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BrainkernelsError(f"{path}: checkpoint not found") from None
    except Exception as error:  # unpickling refused or a damaged file: both mean "do not use"
        raise BrainkernelsError(f"{path}: not a loadable brainkernels checkpoint ({describe_load_error(error)})") \
            from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BrainkernelsError(f"{path}: not a brainkernels checkpoint")
    if payload.get("version") != VERSION:
        raise BrainkernelsError(f"{path}: checkpoint format version {payload.get('version')} is not supported "
                                f"(this brainkernels reads version {VERSION})")
    if payload["method"] != method:
        raise BrainkernelsError(f"{path}: checkpoint of method '{payload['method']}' cannot be used for '{method}'")
    if config is not None:
        stored = {(renamed or {}).get(key, key): value for key, value in payload["config"].items()}
        differing = [key for key in architecture_keys if stored.get(key) != config.get(key)]
        if differing:
            details = ", ".join(f"{key}={stored.get(key)!r} in the checkpoint but {config.get(key)!r} now"
                                for key in differing)
            raise BrainkernelsError(f"{path}: incompatible configuration: {details}")
    return payload


def describe_load_error(error: Exception) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, for a user. PyTorch's own message for a
    refused pickle advises ``weights_only=False``, which would run whatever code the file holds:
    never pass that on."""
    if isinstance(error, pickle.UnpicklingError) and "weights_only" in str(error):
        return "it holds Python objects other than tensors and plain values, which could run code when loaded; refused"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def latest_checkpoint(folder: Path) -> Path | None:
    """The complete checkpoint of the highest step in ``folder`` (temporary files are ignored)."""
    if not folder.is_dir():
        return None
    steps = [(int(match.group(1)), path) for path in folder.iterdir() if (match := _NAME.match(path.name))]
    return max(steps)[1] if steps else None


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` most recent checkpoints."""
    steps = sorted((int(match.group(1)), path) for path in folder.iterdir() if (match := _NAME.match(path.name)))
    for _, path in steps[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)


def remove_partial_checkpoints(folder: Path) -> None:
    """Delete temporary files left by a run killed while writing a checkpoint."""
    if folder.is_dir():
        for path in folder.glob(".step-*.pt.*"):
            path.unlink(missing_ok=True)
