"""What loader worker processes need from this process before they start.

A worker hands each sample's tensors to this process through a socket that multiprocessing
makes in a temporary folder of its own. When a worker has to create that folder itself and
cannot (the system temporary folder is full or unwritable), the error happens in the worker's
queue thread, which only prints it: the sample is lost, the worker lives on, and the command
waits for the sample forever. Created here, the folder is inherited by the workers forked
after it, and a failure stops the command with an error that says what to do.
"""

from __future__ import annotations

import multiprocessing.util

from brainkernels.errors import BrainkernelsError


def prepare_worker_start(workers: int) -> None:
    """Call before a loader with ``workers`` processes starts them."""
    if workers == 0:
        return
    try:
        multiprocessing.util.get_temp_dir()
    except OSError as error:
        raise BrainkernelsError(
            f"the loader workers cannot make their temporary folder ({error}); free space in the temporary folder, "
            "point TMPDIR at a writable one, or load in this process with --workers 0") from None
