"""``genqueue flower``: Flower on genqueue's Celery app, with basic auth and saved state.

Flower is read-only unless ``FLOWER_READ_ONLY`` says otherwise: anyone who can see it should
not thereby be able to revoke tasks, kill worker pools or shut workers down.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from genqueue.cli.ports import is_loopback
from genqueue.private_files import PRIVATE_UMASK, make_private_dir
from worker.errors import SettingsError
from worker.settings import Settings

#: ``FLOWER_READ_ONLY`` values that turn control on (tornado's own false words, and a few more).
_FALSE_WORDS = frozenset({"false", "0", "f", "no", "n", "off"})
#: Flower's saved state in the data folder (a dbm may add suffixes to the name).
FLOWER_DB_NAME = "flower.db"


def read_only(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether Flower's control API is off: yes unless ``FLOWER_READ_ONLY`` is false-ish."""
    value = environ.get("FLOWER_READ_ONLY", "").strip().lower()
    return value not in _FALSE_WORDS


def flower_argv(settings: Settings, host: str, port: int) -> list[str]:
    """The ``celery flower`` command; ``FLOWER_*`` variables are read by Flower itself."""
    state_dir = make_private_dir(settings.data_dir.resolve())
    return [
        sys.executable, "-m", "celery", "-A", "genqueue.flower_app", "flower",
        f"--address={host}",
        f"--port={port}",
        "--persistent=True",
        f"--db={os.environ.get('FLOWER_DB', str(state_dir / FLOWER_DB_NAME))}",
        "--state_save_interval=10000",
        # On the command line, it wins over Flower's own reading of FLOWER_READ_ONLY.
        f"--read_only={read_only()}",
    ]  # fmt: skip


def run_flower(settings: Settings, host: str, port: int) -> int:
    if not os.environ.get("FLOWER_BASIC_AUTH") and not is_loopback(host):
        raise SettingsError(
            f"refusing to serve Flower on {host} without FLOWER_BASIC_AUTH=user:password"
        )
    argv = flower_argv(settings, host, port)
    # Its saved state holds every task's arguments: the owner's alone.
    os.umask(PRIVATE_UMASK)
    os.execv(argv[0], argv)
    return 0  # not reached
