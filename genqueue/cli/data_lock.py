"""One ``genqueue up`` per data folder: a second one would run a second Redis on the same AOF.

``up`` holds an exclusive ``flock`` on ``<data folder>/up.lock`` while it runs, with its process
id written in it for the error of the next one. The kernel releases the lock when the process
ends, however it ends, so the lock of an ``up`` that was killed never blocks the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from genqueue.errors import StartupFailed
from genqueue.private_files import FILE_MODE

LOCK_FILE_NAME = "up.lock"


class DataFolderInUse(StartupFailed):
    """Raised when another running ``genqueue up`` holds the data folder."""


def lock_data_folder(data_dir: Path) -> int:
    """Take the data folder's lock for this process; the descriptor that holds it.

    Raises :class:`DataFolderInUse` at once (no waiting) when another process holds it.
    """
    path = data_dir / LOCK_FILE_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise DataFolderInUse(
            f"the data folder {data_dir} is in use by another genqueue up{who}; stop that "
            "one, or give this one a folder of its own with GENQUEUE_DATA_DIR=<folder>"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def unlock_data_folder(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)  # closing the last descriptor releases the flock
