"""``genqueue bench`` end to end, tiny: genqueue and bare Celery drain 50 tasks; no timing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid``: the bench and all it started."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getsid(int(entry)) == sid:
                    os.kill(int(entry), signal.SIGKILL)


@pytest.mark.timeout(180)
def test_quick_bench_drains_with_genqueue_and_bare_celery(redis_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQUEUE_", "RUNPOD_"))}
    env["REDIS_URL"] = redis_url
    command = [sys.executable, "-m", "genqueue", "bench", "--quick", "--only", "drain"]
    process = subprocess.Popen(
        [*command, "--only", "bare"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=120)
    finally:
        _kill_session(process.pid)
        process.wait()
    assert process.returncode == 0, stderr.decode(errors="replace")
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    results = report["results"]
    assert set(results) == {"drain", "bare_drain"}
    for phase in ("drain", "bare_drain"):
        figures = results[phase]
        assert figures["tasks"] == 50
        assert figures["completed"] == [50]
        assert figures["throughput_per_s"]["median"] > 0
        assert figures["cpu_ms_per_task"]["median"] > 0
        assert figures["peak_rss_mb"]["median"] > 0
        _assert_redis_figures(figures)
    assert report["ratios"]["drain_throughput"]["median"] > 0


def _assert_redis_figures(figures: dict) -> None:
    """Redis's own cost per task: CPU, commands, the core's ceiling, the most called commands."""
    cpu_us = figures["redis_cpu_us_per_task"]["median"]
    assert cpu_us > 0
    assert figures["redis_core_saturates_at_per_s"]["median"] == pytest.approx(1e6 / cpu_us, 0.01)
    commands = figures["redis_commands_per_task"]["median"]
    top = figures["redis_top_commands_per_task"]
    assert 5 < commands < 100
    assert 1 <= figures["redis_enqueue_commands_per_task"]["median"] < commands
    enqueue_us = figures["redis_enqueue_cpu_us_per_task"]["median"]
    drain_us = figures["redis_drain_cpu_us_per_task"]["median"]
    assert enqueue_us + drain_us == pytest.approx(cpu_us, 0.01)
    medians = [summary["median"] for summary in top.values()]
    assert 5 <= len(medians) <= 12 and min(medians) > 0
    assert medians == sorted(medians, reverse=True)
    assert sum(medians) <= commands + 0.01


@pytest.mark.timeout(180)
def test_quick_enqueue_measures_redis_per_api_request(redis_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQUEUE_", "RUNPOD_"))}
    env["REDIS_URL"] = redis_url
    command = [sys.executable, "-m", "genqueue", "bench", "--quick", "--only", "enqueue"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=120)
    finally:
        _kill_session(process.pid)
        process.wait()
    assert process.returncode == 0, stderr.decode(errors="replace")
    api = json.loads(stdout.decode().strip().splitlines()[-1])["results"]["enqueue"]["api"]
    assert api["requests_per_s"]["median"] > 0
    assert api["redis_cpu_us_per_request"]["median"] > 0
    # one submission: record, its expiry, inbox entry, message, task-sent event, in a MULTI
    assert 5 <= api["redis_commands_per_request"]["median"] < 20
