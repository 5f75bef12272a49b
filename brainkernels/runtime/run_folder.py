"""A run folder: the resolved config, a metrics log (JSON lines), checkpoints and figures."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from brainkernels.data.atomic import atomic_path
from brainkernels.errors import BrainkernelsError


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
