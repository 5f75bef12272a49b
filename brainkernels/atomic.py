"""Files are written under a temporary name and renamed into place, so a crash, a full disk or
an exception never leaves a half-written output under the real name."""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extensions); on success it replaces ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".nii.gz") else target.suffix
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    # mkstemp creates owner-only files; outputs get the permissions of an ordinary new file.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary_path, 0o666 & ~umask)
    try:
        yield temporary_path
        os.replace(temporary_path, target)
    except OSError as error:
        temporary_path.unlink(missing_ok=True)
        if error.filename is None and error.strerror:  # a failed write() names no file: name the output
            raise OSError(error.errno, error.strerror, str(target)) from error
        raise
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise


def write_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """``rows`` (dicts with the same keys, in column order) as a CSV file with a header, atomically."""
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
