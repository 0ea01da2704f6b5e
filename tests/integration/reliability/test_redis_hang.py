"""A Redis that hangs (SIGSTOP: a network partition that neither refuses nor answers): every
API answer comes within its documented bound, a 503 as for a Redis that refuses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from genqueue.embedded_redis import EmbeddedRedis, free_port
from tests.e2e.test_api_processes import _wait_healthy
from tests.integration.reliability.conftest import wait_for
from worker.redis_io.connections import api_answer_bound_s
from worker.settings import Settings

pytestmark = pytest.mark.timeout(240)

API_KEY = "hang-key-1"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
BODY = {"prompt": "How can I make a cake?", "params": {"max_tokens": 6}}
#: The bound is a correctness bound: slack for a loaded machine, not a benchmark.
SLACK_S = 3.0
#: A worker's stall: past its claims (5 s here) and past its Redis socket timeout (30 s).
HANG_S = 40.0


@contextlib.contextmanager
def api_process(redis_url: str, tmp_path: Path, **env: str) -> Iterator[str]:
    """``genqueue api`` as a process of its own; its URL."""
    port = free_port()
    environ = {**os.environ, "REDIS_URL": redis_url, "GENQUEUE_API_KEYS": API_KEY, **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "genqueue", "api", "--port", str(port)],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield url
    finally:
        process.kill()
        process.wait()


@contextlib.contextmanager
def hung(server: EmbeddedRedis) -> Iterator[None]:
    """The Redis process stopped (its port still accepts connections: the kernel does)."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def timed(method: str, url: str, headers: dict[str, str], **kwargs: Any) -> tuple[int, float]:
    """The answer's status (-1: none within two minutes) and how long it took."""
    started = time.monotonic()
    try:
        response = requests.request(method, url, headers=headers, timeout=120, **kwargs)
    except requests.RequestException:
        return -1, time.monotonic() - started
    return response.status_code, time.monotonic() - started


def test_a_hung_redis_answers_every_route_503_within_the_bound(
    own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    bound_s = api_answer_bound_s(Settings(redis_url=own_redis.url))
    assert bound_s == 5.0  # the documented default
    with api_process(own_redis.url, tmp_path) as url:
        accepted = requests.post(f"{url}/v1/tasks", json=BODY, headers=AUTH, timeout=10)
        assert accepted.status_code == 202
        task_id = accepted.json()["task_id"]
        keyed = {**AUTH, "Idempotency-Key": "hang-1"}
        calls = [
            ("POST", f"{url}/v1/tasks", AUTH, {"json": BODY}),
            ("POST", f"{url}/v1/tasks", keyed, {"json": BODY}),
            ("GET", f"{url}/v1/tasks/{task_id}", AUTH, {}),
            ("GET", f"{url}/v1/tasks/{task_id}?wait=1", AUTH, {}),
            ("GET", f"{url}/v1/tasks/{task_id}/stream", AUTH, {}),
            ("DELETE", f"{url}/v1/tasks/{task_id}", AUTH, {}),
            ("GET", f"{url}/v1/usage", AUTH, {}),
            ("GET", f"{url}/readyz", AUTH, {}),
        ] * 3
        with hung(own_redis), ThreadPoolExecutor(len(calls)) as pool:
            answers = list(
                pool.map(lambda call: timed(call[0], call[1], call[2], **call[3]), calls)
            )
        for (method, call_url, _, _), (code, took_s) in zip(calls, answers, strict=True):
            assert code == 503, f"{method} {call_url}: {code} after {took_s:.1f} s"
            assert took_s < bound_s + SLACK_S, f"{method} {call_url}: {took_s:.1f} s"
        # Redis back: the API serves again at once, a keyed request included.
        fresh = {**AUTH, "Idempotency-Key": "hang-2"}
        again = requests.post(f"{url}/v1/tasks", json=BODY, headers=fresh, timeout=10)
        assert again.status_code == 202
        # The key used during the hang may hold a claim that Redis ran once it woke, after its
        # request had been answered 503: a request with it is still answered within the
        # documented wait for a claim (10 s): its task, or "in use, retry".
        reused = requests.post(f"{url}/v1/tasks", json=BODY, headers=keyed, timeout=30)
        assert reused.status_code in (202, 409), reused.text


def test_a_worker_rides_out_a_hung_redis_and_its_task_succeeds_once(
    own_redis: EmbeddedRedis, api_factory: Any, simulator: Any, start_worker: Any
) -> None:
    """A stall longer than the workers' claims and than a Redis reply may take (their socket
    timeout is 30 s): the hang becomes an outage the task rides out, not a stuck task."""
    fast = {"GENQUEUE_VISIBILITY_TIMEOUT_S": "5", "GENQUEUE_HEARTBEAT_INTERVAL_S": "1"}
    api = api_factory(own_redis.url, api_keys=API_KEY)
    workers = [start_worker(own_redis.url, simulator.url, **fast) for _ in range(2)]
    simulator.configure(latency_s=3)
    accepted = requests.post(f"{api.url}/v1/tasks", json=BODY, headers=AUTH, timeout=10)
    task_id = accepted.json()["task_id"]
    wait_for(lambda: simulator.stats()["in_flight"] == 1, 15, "the endpoint call")
    with hung(own_redis):
        time.sleep(HANG_S)
    deadline = time.monotonic() + 90
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        url = f"{api.url}/v1/tasks/{task_id}?wait=5"
        answer = requests.get(url, headers=AUTH, timeout=30)
        if answer.status_code == 200:
            status = answer.json()
            if status["status"] in ("succeeded", "failed"):
                break
    assert status.get("status") == "succeeded", status
    assert simulator.stats()["calls"] == 1
    assert all(worker.process.poll() is None for worker in workers)
