"""``genqueue flower``: Flower on genqueue's Celery app, with basic auth and saved state."""

from __future__ import annotations

import os
import sys

from api_producer.server import is_loopback
from worker.errors import SettingsError
from worker.settings import Settings


def flower_argv(settings: Settings, host: str, port: int) -> list[str]:
    """The ``celery flower`` command; ``FLOWER_*`` variables are read by Flower itself."""
    state_dir = settings.data_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "flower",
        f"--address={host}",
        f"--port={port}",
        "--persistent=True",
        f"--db={os.environ.get('FLOWER_DB', str(state_dir / 'flower.db'))}",
        "--state_save_interval=10000",
    ]  # fmt: skip


def run_flower(settings: Settings, host: str, port: int) -> int:
    if not os.environ.get("FLOWER_BASIC_AUTH") and not is_loopback(host):
        raise SettingsError(
            f"refusing to serve Flower on {host} without FLOWER_BASIC_AUTH=user:password"
        )
    argv = flower_argv(settings, host, port)
    os.execv(argv[0], argv)
    return 0  # not reached
