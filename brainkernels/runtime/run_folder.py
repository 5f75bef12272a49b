"""A run folder: the resolved config, a metrics log (JSON lines), checkpoints and figures.

A training run claims its folder before it writes anything: a folder that holds anything is
refused unless the run resumes the run there or overwrites it, and an OS file lock, held for the
run's life, keeps a second run out. The OS releases the lock of a killed process, so a stale lock
never blocks ``--resume``.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from brainkernels.atomic import atomic_path
from brainkernels.errors import BrainkernelsError

LOCK = ".lock"
RUN_FILES = ("config.toml", "metrics.jsonl", LOCK, "checkpoints/step-*.pt", "checkpoints/.step-*.pt.*",
             "figures/*.png", "evaluation/*.csv", "evaluation/*.png", "evaluation/figures/*.png",
             "cache/*/*")  # the prepared-volume cache's entries (runtime.prepared.CACHE_FOLDER)
"""What every run writes (relative paths, ``*`` within one name): all ``--overwrite`` may remove,
with the files a method adds."""


class RunFolder:
    """``root/config.toml``, ``root/metrics.jsonl``, ``root/checkpoints/``, ``root/figures/``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.config = self.root / "config.toml"
        self.metrics = self.root / "metrics.jsonl"
        self.checkpoints = self.root / "checkpoints"
        self.figures = self.root / "figures"

    def create(self) -> RunFolder:
        """Make the folders; a folder that cannot be written is reported by name."""
        try:
            for folder in (self.root, self.checkpoints, self.figures):
                folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.root / ".write-test"):
                pass
            (self.root / ".write-test").unlink()
        except OSError as error:
            raise BrainkernelsError(f"{self.root}: cannot write the run folder ({error.strerror or error})") from None
        return self

    def contents(self) -> list[Path]:
        """Every file below the root (the lock aside), sorted; a symbolic link to a folder counts as
        a file (it is not followed)."""
        if not self.root.is_dir():
            return []
        found = [Path(folder) / name for folder, folders, names in os.walk(self.root)
                 for name in names + [entry for entry in folders if (Path(folder) / entry).is_symlink()]]
        return sorted(path for path in found if path != self.root / LOCK)

    @contextlib.contextmanager
    def claimed(self, *, resume: bool, overwrite: bool, method_files: tuple[str, ...] = ()) -> Iterator[RunFolder]:
        """Hold the folder for a run: new or empty, or with ``resume`` a run folder (the caller
        checks that the run is compatible), or with ``overwrite`` one whose files are all files a
        run writes (``RUN_FILES`` and ``method_files``), which are removed. Checked before and
        again after taking the lock, so nothing is written into a refused folder and a run that
        finished while this one waited for the lock is not overwritten."""
        if resume and overwrite:
            raise BrainkernelsError("--resume and --overwrite exclude each other: resume continues the run in "
                                    "--out, overwrite replaces it")
        patterns = RUN_FILES + method_files
        self._check(resume, overwrite, patterns)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = (self.root / LOCK).open("a")
        except OSError as error:
            raise BrainkernelsError(f"{self.root}: cannot write the run folder ({error.strerror or error})") from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BrainkernelsError(f"{self.root}: another run is writing into this folder; wait for it to end "
                                        "or choose another --out") from None
            self._check(resume, overwrite, patterns)
            if overwrite:
                self._remove_run_files()
            self.create()
            yield self

    def _check(self, resume: bool, overwrite: bool, patterns: tuple[str, ...]) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise BrainkernelsError(f"--out {self.root}: exists and is not a folder")
        files = self.contents()
        if not files:
            return
        if resume:
            if not self.config.is_file():
                raise BrainkernelsError(f"--out {self.root}: not a run folder (no config.toml), so there is no run "
                                        "to resume; choose an empty or new folder")
        elif overwrite:
            unknown = [path for path in files if not _matches(path.relative_to(self.root), patterns)]
            if unknown:
                raise BrainkernelsError(f"--out {self.root}: holds files a run does not write (e.g. {unknown[0]}); "
                                        "--overwrite removes only a run's own files: move the others away first")
        else:
            raise BrainkernelsError(f"--out {self.root}: the folder is not empty ({len(files)} files, e.g. "
                                    f"{files[0].relative_to(self.root)}); pass --resume to continue the run in it, "
                                    "--overwrite to replace it, or choose a new folder")

    def _remove_run_files(self) -> None:
        for path in self.contents():
            path.unlink()
        for folder, _, _ in sorted(os.walk(self.root), reverse=True):  # deepest first
            if Path(folder) != self.root and not any(Path(folder).iterdir()):
                Path(folder).rmdir()

    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def truncate_metrics(self, last_step: int) -> None:
        """Drop rows logged after ``last_step`` (by a run that died before its next checkpoint)."""
        rows = [row for row in self.read_metrics() if row.get("step", 0) <= last_step]
        with atomic_path(self.metrics) as temporary:
            temporary.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _matches(relative: Path, patterns: tuple[str, ...]) -> bool:
    parts = PurePosixPath(relative).parts
    return any(len(pattern.split("/")) == len(parts)
               and all(fnmatch.fnmatchcase(part, wanted) for part, wanted in zip(parts, pattern.split("/")))
               for pattern in patterns)
