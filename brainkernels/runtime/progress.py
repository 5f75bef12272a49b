"""Progress bars: tqdm with ETA on rank 0, silent with --quiet or when stderr is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", quiet: bool = False,
             main: bool = True, **options: Any) -> tqdm:
    disable = quiet or not main or not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, **options)
