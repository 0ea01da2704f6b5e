"""``genqueue status`` without a task id: the live view, printed once with ``--once``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from worker import keys

pytestmark = pytest.mark.timeout(90)

REQUEST = {"prompt": "status", "params": {"max_tokens": 3}}


def _status_once(redis_url: str, endpoint_url: str | None, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GENQUEUE_", "RUNPOD_"))}
    clean.update(REDIS_URL=redis_url, **env)
    if endpoint_url is not None:
        clean["RUNPOD_ENDPOINT_URL"] = endpoint_url
    done = subprocess.run(
        [sys.executable, "-m", "genqueue", "status", "--once"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _line(text: str, label: str) -> str:
    found = [line for line in text.splitlines() if line.startswith(label)]
    assert found, f"no {label!r} line in:\n{text}"
    return found[0][len(label) :].strip()


def test_status_once(redis_url, redis_client, simulator, start_worker, celery_client) -> None:
    for priority in (0, 9):
        celery_client.send_task(
            "genqueue.generate", kwargs={"request": REQUEST}, queue="genqueue", priority=priority
        )
    endpoint = "default"  # RUNPOD_ENDPOINT_URL alone defines the endpoint "default"
    now_ms = int(time.time() * 1000)
    redis_client.zadd(keys.lease(endpoint), {"a": now_ms + 60_000, "b": now_ms + 60_000})
    redis_client.hset(keys.breaker(endpoint), mapping={"open_until": now_ms + 60_000})
    redis_client.lpush(keys.dead_letters(), json.dumps({"task_id": "x"}))

    before = _status_once(redis_url, simulator.url, RUNPOD_MAX_CONCURRENCY="4")
    assert _line(before, "queue depth") == "2"
    assert _line(before, "in flight") == f"2 / 4  (endpoint {endpoint})"
    assert _line(before, "breaker").startswith("open (probe in ")
    assert _line(before, "dead letters") == "1"
    assert _line(before, "last minute") == "succeeded 0  failed 0  cancelled 0  (0.00/s)"

    redis_client.delete(keys.lease(endpoint), keys.breaker(endpoint))
    start_worker(redis_url, simulator.url)
    simulator.script({"status": 400})
    failing = celery_client.send_task("genqueue.generate", kwargs={"request": REQUEST})
    failing.get(timeout=30, propagate=False)
    for _ in range(3):
        celery_client.send_task("genqueue.generate", kwargs={"request": REQUEST}).get(timeout=30)

    after = _status_once(redis_url, simulator.url, RUNPOD_MAX_CONCURRENCY="4")
    assert _line(after, "queue depth") == "0"
    assert _line(after, "in flight") == f"0 / 4  (endpoint {endpoint})"
    assert _line(after, "breaker") == "closed"
    assert _line(after, "last minute") == "succeeded 5  failed 1  cancelled 0  (0.10/s)"
    assert _line(after, "failures (1 min)") == "endpoint_rejected 1"


def test_status_without_endpoint_or_redis(redis_url) -> None:
    text = _status_once(redis_url, None)
    assert _line(text, "in flight").startswith("unknown")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQUEUE_", "RUNPOD_"))}
    env["REDIS_URL"] = "redis://127.0.0.1:1/0"
    done = subprocess.run(
        [sys.executable, "-m", "genqueue", "status", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "Redis is unreachable" in done.stderr
