"""``genqueue worker``: Celery worker processes on the gevent pool, one per core by default.

Each process holds ``GENQUEUE_WORKER_CONCURRENCY`` greenlets: the work is waiting on a GPU, so
one process serves hundreds of in-flight calls, and several processes use every core. A child
that dies is started again; SIGINT or SIGTERM is passed to every child (Celery's warm shutdown:
tasks in flight finish, the rest go back to the queue) and the command waits for them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from types import FrameType

from worker.contract import CELERY_DEFAULT_QUEUE, QUEUE_NAME
from worker.endpoints import Endpoints, queue_for
from worker.errors import SettingsError
from worker.settings import Settings

RESTART_DELAY_S = 1.0
#: The exit status of a worker whose settings are invalid.
CONFIG_ERROR_EXIT = 2


def worker_queues(endpoints: Endpoints, only: str | None = None) -> list[str]:
    """The queues a worker consumes: every endpoint's, or ``only`` that one's.

    Tasks that name no endpoint wait in genqueue's queue (and Celery's default one, for plain
    ``send_task``); a worker dedicated to the default endpoint takes those too.
    """
    general = [QUEUE_NAME, CELERY_DEFAULT_QUEUE]
    if only is None:
        return general + [queue_for(name) for name in endpoints.names]
    if only not in endpoints:
        known = ", ".join(endpoints.names)
        raise SettingsError(f"--endpoint {only!r} is not a configured endpoint ({known})")
    return [queue_for(only)] + (general if only == endpoints.default else [])


def worker_argv(
    settings: Settings, index: int, queues: list[str], hostname: str | None = None
) -> list[str]:
    """The ``celery worker`` command line of child ``index``."""
    name = hostname or f"genqueue{index}@{socket.gethostname()}"
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--pool", settings.worker_pool,
        "--concurrency", str(settings.worker_concurrency),
        "--queues", ",".join(queues),
        "--hostname", name,
        "--task-events",
        "--without-gossip", "--without-mingle",
        "--loglevel", settings.log_level,
    ]  # fmt: skip


def process_count(settings: Settings) -> int:
    return settings.worker_processes or os.cpu_count() or 1


class WorkerSupervisor:
    """Starts the worker processes, restarts any that die, stops them all on a signal."""

    def __init__(
        self, settings: Settings, queues: list[str], hostname: str | None = None
    ) -> None:
        self._settings = settings
        self._queues = queues
        self._hostname = hostname
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = False

    def _spawn(self, index: int) -> None:
        name = None
        if self._hostname:
            name = self._hostname if index == 0 else f"{index}-{self._hostname}"
        argv = worker_argv(self._settings, index, self._queues, name)
        self._children[index] = subprocess.Popen(argv)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True
        for child in self._children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for index in range(process_count(self._settings)):
            self._spawn(index)
        while True:
            time.sleep(0.2)
            if self._stopping:
                break
            for index, child in list(self._children.items()):
                if child.poll() == CONFIG_ERROR_EXIT:
                    # Invalid settings: starting again would fail the same way.
                    self._on_signal(signal.SIGTERM, None)
                    return self._wait_all() or CONFIG_ERROR_EXIT
                if child.returncode is not None:
                    print(
                        f"genqueue worker: process {index} exited with {child.returncode}; "
                        "starting it again",
                        file=sys.stderr,
                        flush=True,
                    )
                    time.sleep(RESTART_DELAY_S)
                    self._spawn(index)
        return self._wait_all()

    def _wait_all(self) -> int:
        status = 0
        for child in self._children.values():
            try:
                child.wait()
            except KeyboardInterrupt:
                child.kill()
                child.wait()
            status = status or (child.returncode if child.returncode > 0 else 0)
        return status
