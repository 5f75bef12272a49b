"""Moved to :mod:`brainkernels.atomic` (the training engine uses it too, and it sits below both);
kept so that imports from here keep working."""

from brainkernels.atomic import atomic_path, write_csv

__all__ = ["atomic_path", "write_csv"]
