"""worker.process: the options `genqueue worker` passes to each of its Celery processes."""

from __future__ import annotations

from typing import get_args

import pytest

from genqueue.cli.worker import worker_argv
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
