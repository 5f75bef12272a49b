"""Named demo stages: each prints when it starts and records its wall time for the report."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator


class Stages:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if not self.quiet:
            print(f"[demo] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - start
            if not self.quiet:
                print(f"[demo] {name}: {self.seconds[name]:.0f} s", file=sys.stderr, flush=True)
