"""worker.process: the options `genqueue worker` passes to each of its Celery processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, get_args

import pytest
from celery import Celery

from genqueue.cli.worker import redis_problems, worker_argv
from genqueue.embedded_redis import EmbeddedRedis, free_port
from tests.conftest import worker_env
from worker import process
from worker.settings import Settings, WorkerPool


def test_the_pools_are_the_settings_pools() -> None:
    assert set(process.POOLS) == set(get_args(WorkerPool))


def test_the_supervisors_command_line_parses() -> None:
    settings = Settings(worker_pool="threads", worker_concurrency=7, log_level="DEBUG")
    argv = worker_argv(settings, 0, ["genqueue", "genqueue.default"], "w0@host")

    assert argv[1:3] == ["-m", "worker.process"]
    options = process.parse(argv[3:])
    assert (options.pool, options.concurrency, options.hostname, options.loglevel) == (
        "threads", 7, "w0@host", "DEBUG",
    )  # fmt: skip
    assert options.queues == "genqueue,genqueue.default"


def test_an_unknown_pool_is_refused_with_its_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        process.parse(
            ["--pool", "eventlet", "--concurrency", "1", "--queues", "q", "--hostname", "h"]
        )
    assert exit_.value.code == 2
    assert "eventlet" in capsys.readouterr().err


def test_the_worker_says_why_redis_does_not_answer(redis_url: str) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    assert redis_problems(Settings(redis_url=redis_url)) == []
    assert redis_problems(Settings(redis_url=closed)) == ["REDIS_URL: Redis is unreachable"]
    apart = Settings(redis_url=redis_url, result_redis_url=closed)
    assert redis_problems(apart) == ["GENQUEUE_RESULT_REDIS_URL: Redis is unreachable"]


@pytest.mark.timeout(90)
def test_a_worker_started_before_redis_says_so_and_serves_once_redis_is_up(
    tmp_path: Path, simulator: Any
) -> None:
    """Redis may come up after the workers: they start and keep trying, the reason said once,
    first; a task sent once Redis is up is served by them."""
    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    env = {**worker_env(url, simulator.url), "GENQUEUE_WORKER_PROCESSES": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "genqueue", "worker"],
        env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        assert first == (
            "genqueue worker: Redis does not answer yet (REDIS_URL: Redis is unreachable); "
            "the workers start and keep trying\n"
        )
        assert "hunter2" not in first
        time.sleep(2)
        assert process.poll() is None  # still running, still trying
        with EmbeddedRedis(tmp_path / "redis", port, password="hunter2"):
            celery = Celery(broker=url, backend=url, set_as_current=False)
            try:
                sent = celery.send_task(
                    "genqueue.generate", kwargs={"request": {"prompt": "late", "params": {}}}
                )
                assert sent.get(timeout=60)["usage"]["completion_tokens"] > 0
            finally:
                celery.close()
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
