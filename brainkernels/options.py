"""Argument types shared by the commands: a value out of range is refused by argparse, naming the
option, before the command does anything."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def at_least(minimum: int, option: str) -> Callable[[str], int]:
    """An integer option with a lower bound (every count has one)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be an integer; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{option} must be at least {minimum}; got {value}")
        return value

    return parse
