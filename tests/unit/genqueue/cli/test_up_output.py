"""What ``genqueue up`` prints: task lines, their budget a second, a dead component's report."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from genqueue.cli.up_output import Death, death_report, log_tail, open_private_log
from genqueue.cli.up_tasks import Finished, LineBudget, duration, task_line


def _clock(epoch_s: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch_s))


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.0, "0 ms"), (0.8124, "812 ms"), (1.0, "1.0 s"), (59.94, "59.9 s"), (125.4, "2 min 5 s")],
)
def test_duration(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


def test_task_lines() -> None:
    at = 1_780_000_000.0
    clock = _clock(at)
    assert task_line(Finished("t1", "succeeded", finished_at=at, took_s=0.812)) == (
        f"{clock} t1 succeeded (812 ms)"
    )
    failed = Finished("t2", "failed", "EndpointError", attempts=3, finished_at=at, took_s=5.25)
    assert task_line(failed) == f"{clock} t2 failed: EndpointError (5.2 s, 3 attempts)"
    # A plain Celery task has no acceptance time: no duration.
    assert task_line(Finished("t3", "cancelled", finished_at=at)) == f"{clock} t3 cancelled"


def test_line_budget_counts_what_is_past_the_lines_of_a_second() -> None:
    assert LineBudget().per_s == 10
    budget = LineBudget(per_s=3)
    tasks = [Finished(f"t{i}", "failed" if i == 4 else "succeeded") for i in range(6)]
    first = budget.lines(tasks, now=100.0)
    assert [line.split()[1] for line in first] == ["t0", "t1", "t2"]
    # Within the same second: nothing more, however many finish.
    assert budget.lines([Finished("t6", "succeeded")], now=100.5) == []
    # The next second opens with the count of the held ones, then lines again.
    later = budget.lines([Finished("t7", "succeeded")], now=101.2)
    assert len(later) == 2
    held = r"\d\d:\d\d:\d\d \.\.\. and 4 more finished: 1 failed, 3 succeeded"
    assert re.fullmatch(held, later[0])
    assert later[1].split()[1] == "t7"
    assert budget.lines([], now=102.5) == []
    # What is held when the watcher stops is counted then.
    budget.lines([Finished(f"u{i}", "cancelled") for i in range(5)], now=103.0)
    assert [line.split(" ", 1)[1] for line in budget.flush()] == [
        "... and 2 more finished: 2 cancelled"
    ]
    assert budget.flush() == []


def test_death_report_names_the_component_and_shows_its_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    os.write(fd := open_private_log(log), "".join(f"line {i}\n" for i in range(30)).encode())
    os.close(fd)
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    report = death_report(Death("worker", 3, log)).splitlines()
    assert report[:2] == [
        "genqueue up: worker exited with status 3; stopping everything",
        f"last lines of {log}:",
    ]
    assert report[2:] == [f"  | line {i}" for i in range(10, 30)]
    killed = death_report(Death("flower", -9, tmp_path / "missing.log")).splitlines()
    assert killed == [
        "genqueue up: flower was killed by SIGKILL; stopping everything",
        f"its log {tmp_path / 'missing.log'} is empty",
    ]


def test_a_log_is_rewritten_at_each_start(tmp_path: Path) -> None:
    log = tmp_path / "api.log"
    log.write_text("from the last run\n")
    log.chmod(0o644)
    os.close(open_private_log(log))
    assert log.read_text() == ""
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    assert log_tail(log) == []
