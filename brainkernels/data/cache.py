"""The prepared-volume cache: what a method computes from its source files before sampling
(loaded, reoriented, resampled, normalised, padded arrays) kept as uncompressed ``.npy`` files
and read back memory-mapped, so a training sample or an inference item reads only its bytes
instead of decompressing and preparing whole NIfTI files again.

Layout: ``CACHE/<key>/`` holds one ``<name>.npy`` per array and ``entry.json`` (written last)
with the source identities, the settings and small values (affines, crops). ``key`` hashes the
kind of entry, the resolved source paths and the preparation settings, so other settings make
another entry beside it; a source file whose size or modification time changed makes its entry
stale, and the next build replaces it.

An entry is built in a temporary folder beside it, every file flushed to disk, and renamed into
place: a build killed halfway leaves only a ``.<key>.building-*`` folder, which never reads as
an entry and is removed by the next build of that key. One process builds at a time (under DDP,
rank 0: see ``brainkernels.runtime.prepared``).

Why ``.npy`` and not zarr: the arrays are read as they were written (no compression, since
decompressing is what made loading slow), numpy's own memory map reads an arbitrary window at the
cost of the pages it touches, and it needs no further dependency or chunk-size choice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import brainkernels

ENTRY_FILE = "entry.json"


def source_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a source file's content without reading it: resolved path, size, mtime."""
    resolved = Path(path).resolve()
    try:
        status = resolved.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    return {"path": str(resolved), "size": status.st_size, "mtime_ns": status.st_mtime_ns}


@dataclass(frozen=True)
class Request:
    """An entry to have: ``build()`` returns ``(arrays, values)``, the arrays to map and the small
    JSON-able values (affine, crop, ...) that go with them; ``sources`` are the files it reads and
    ``settings`` every option that changes its result."""

    kind: str
    sources: Sequence[str | os.PathLike]
    settings: Mapping[str, Any]
    build: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]]

    @property
    def key(self) -> str:
        description = {"kind": self.kind, "sources": [str(Path(path).resolve()) for path in self.sources],
                       "settings": dict(self.settings), "version": brainkernels.__version__}
        return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Entry:
    """A built entry: ``tensor(name)`` maps one of its arrays; ``values`` are the small ones."""

    folder: Path
    values: dict[str, Any]

    def tensor(self, name: str) -> torch.Tensor:
        """The array as a tensor over the file's pages, read when used. Mapped copy-on-write:
        torch has no read-only tensors, and an in-place change must stay in this process rather
        than crash on a read-only map."""
        return torch.from_numpy(np.load(self.folder / f"{name}.npy", mmap_mode="c"))


class PreparedCache:
    """The cache folder ``root`` (created on first build)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def lookup(self, request: Request) -> Entry | None:
        """The entry of ``request`` if it is built and its sources are unchanged, else None."""
        folder = self.root / request.key
        try:
            recorded = json.loads((folder / ENTRY_FILE).read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None
        if recorded["sources"] != [source_identity(path) for path in request.sources]:
            return None
        return Entry(folder, recorded["values"])

    def build(self, request: Request) -> Entry:
        """Build the entry of ``request`` (replacing a stale one) and return it."""
        folder = self.root / request.key
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(f".{request.key}.*"):  # from a build that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        sources = [source_identity(path) for path in request.sources]
        building = Path(tempfile.mkdtemp(prefix=f".{request.key}.building-", dir=self.root))
        try:
            arrays, values = request.build()
            for name, array in arrays.items():
                with open(building / f"{name}.npy", "wb") as handle:
                    np.save(handle, np.ascontiguousarray(array))
                    _flush(handle)
            recorded = {"kind": request.kind, "sources": sources, "settings": dict(request.settings),
                        "values": values}
            with open(building / ENTRY_FILE, "w") as handle:
                json.dump(recorded, handle)
                _flush(handle)
            if folder.exists():  # stale: moved aside first, since a folder cannot replace a full one
                stale = Path(tempfile.mkdtemp(prefix=f".{request.key}.stale-", dir=self.root))
                os.replace(folder, stale / "entry")
                shutil.rmtree(stale)
            os.replace(building, folder)
            _sync_folder(self.root)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        return Entry(folder, values)

    def get(self, request: Request) -> Entry:
        """The entry of ``request``, built first when it is missing or stale."""
        return self.lookup(request) or self.build(request)


def _flush(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
