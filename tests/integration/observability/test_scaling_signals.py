"""The signals an autoscaler needs, per endpoint: queue depth, the oldest queued task's age,
in flight against the cap, time since the last call, and the pod's hours; as the API's
Prometheus gauges and in ``genqueue status --json`` (worker/observability/scaling.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from genqueue.cli.status_view import read_view, render
from tests.conftest import SimulatorControl
from tests.integration.observability.conftest import scrape, value
from worker import keys
from worker.delivery.records import iso
from worker.endpoints.config import load_endpoints
from worker.observability.call_clock import CallClock
from worker.observability.scaling import read_signals
from worker.settings import Settings

pytestmark = pytest.mark.timeout(90)


def ms_ago(seconds: float) -> int:
    return int((time.time() - seconds) * 1000)


@pytest.fixture
def endpoints_file(tmp_path: Path) -> Path:
    path = tmp_path / "endpoints.toml"
    path.write_text(
        'default = "pod"\n'
        '[endpoints.pod]\nurl = "http://127.0.0.1:9"\nmax_concurrency = 4\n'
        'runpod_pod_id = "abc123"\nusd_per_hour = 2.0\n'
        '[endpoints.vllm]\nkind = "openai"\nurl = "http://127.0.0.1:9/v1"\nmax_concurrency = 8\n'
    )
    return path


def busy_state(client: redis.Redis) -> None:
    """Two tasks queued for vllm (the oldest created 30 s ago), one in pod's general queue,
    one waiting 10 s for a slot of pod and one 20 s at its gate; calls in flight; last calls."""
    old = datetime.now(UTC) - timedelta(seconds=30)
    client.hset(keys.task_record("t-old"), "created_at", iso(old))
    client.lpush("genqueue.vllm", json.dumps({"headers": {"id": "t-old"}}))
    client.lpush("genqueue.vllm", json.dumps({"headers": {"id": "t-new"}}))
    client.lpush("genqueue", json.dumps({"headers": {"id": "t-unrecorded"}}))
    client.zadd(keys.admission("pod"), {"w1": 1})
    client.zadd(keys.admission_age("pod"), {"w1": ms_ago(10)})
    client.zadd(keys.pod_waiters("pod"), {"g1": ms_ago(20)})
    client.zadd(keys.lease("vllm"), {"a": ms_ago(-60), "b": ms_ago(-60)})
    client.zadd(keys.last_calls(), {"vllm": ms_ago(5)})
    client.hset(keys.pod("pod"), mapping={"state": "ready", "running_s": 7200, "idle_s": 5400})


def test_each_endpoints_signals_are_read_from_redis(
    redis_client: redis.Redis, redis_url: str, endpoints_file: Path
) -> None:
    busy_state(redis_client)
    settings = Settings(redis_url=redis_url, endpoints_file=endpoints_file)
    pod, vllm = read_signals(redis_client, load_endpoints(settings))
    assert (pod.endpoint, pod.queue_depth, pod.in_flight, pod.max_concurrency) == ("pod", 3, 0, 4)
    assert 19 < pod.oldest_queued_age_s < 25  # the task at the gate
    assert pod.since_last_call_s is None
    assert (pod.pod_state, pod.pod_running_s, pod.pod_idle_s) == ("ready", 7200, 5400)
    assert pod.pod_cost_usd == 4.0
    assert (vllm.queue_depth, vllm.in_flight, vllm.max_concurrency) == (2, 2, 8)
    assert 29 < vllm.oldest_queued_age_s < 35  # dated by its task's record
    assert vllm.since_last_call_s is not None and 4 < vllm.since_last_call_s < 10
    assert vllm.pod_state is None


def test_nothing_waiting_reads_as_zero(
    redis_client: redis.Redis, redis_url: str, endpoints_file: Path
) -> None:
    settings = Settings(redis_url=redis_url, endpoints_file=endpoints_file)
    pod, vllm = read_signals(redis_client, load_endpoints(settings))
    assert (pod.queue_depth, pod.oldest_queued_age_s, pod.pod_state) == (0, 0.0, "unknown")
    assert (vllm.queue_depth, vllm.oldest_queued_age_s, vllm.since_last_call_s) == (0, 0.0, None)


def test_the_api_serves_them_as_prometheus_gauges(
    api_factory: Any, redis_client: redis.Redis, redis_url: str, endpoints_file: Path
) -> None:
    busy_state(redis_client)
    api = api_factory(redis_url, endpoints_file=endpoints_file)
    scraped = scrape(f"{api.url}/metrics")
    assert value(scraped, "genqueue_endpoint_queue_depth", endpoint="pod") == 3
    assert value(scraped, "genqueue_endpoint_queue_depth", endpoint="vllm") == 2
    age = value(scraped, "genqueue_endpoint_oldest_queued_age_seconds", endpoint="vllm")
    assert 29 < age < 35
    assert value(scraped, "genqueue_endpoint_in_flight_ratio", endpoint="vllm") == 0.25
    since = value(scraped, "genqueue_endpoint_seconds_since_last_call", endpoint="vllm")
    assert 4 < since < 10
    absent = ("genqueue_endpoint_seconds_since_last_call", frozenset({("endpoint", "pod")}))
    assert absent not in scraped  # never called: no series
    assert value(scraped, "genqueue_pod_ready", endpoint="pod") == 1
    assert value(scraped, "genqueue_pod_running_seconds", endpoint="pod") == 7200
    assert value(scraped, "genqueue_pod_idle_seconds", endpoint="pod") == 5400
    assert ("genqueue_pod_ready", frozenset({("endpoint", "vllm")})) not in scraped


def test_genqueue_status_shows_them_and_prints_them_as_json(
    redis_client: redis.Redis, redis_url: str, endpoints_file: Path
) -> None:
    busy_state(redis_client)
    settings = Settings(redis_url=redis_url, endpoints_file=endpoints_file)
    lines = render(read_view(redis_client, settings)).splitlines()
    assert "pod              ready: ran 2.00 h, 1.50 h of them idle, $4.00" in lines
    waiting = [line for line in lines if line.startswith("waiting")]
    assert waiting[0].startswith("waiting          3, the oldest for 2")
    assert waiting[0].endswith("; last call never  (endpoint pod)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQUEUE_", "RUNPOD_"))}
    env.update(REDIS_URL=redis_url, GENQUEUE_ENDPOINTS_FILE=str(endpoints_file))
    done = subprocess.run(
        [sys.executable, "-m", "genqueue", "status", "--json"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    pod, vllm = printed["endpoints"]
    assert pod["endpoint"] == "pod" and pod["queue_depth"] == 3 and pod["max_concurrency"] == 4
    assert pod["pod"] == {
        "state": "ready",
        "running_hours": 2.0,
        "idle_hours": 1.5,
        "usd_per_hour": 2.0,
        "cost_usd": 4.0,
    }
    assert (vllm["in_flight"], vllm["breaker"], vllm["queue_depth"]) == (2, "closed", 2)
    assert 29 < vllm["oldest_queued_age_s"] < 35
    assert 4 < vllm["since_last_call_s"] < 10
    assert "pod" not in vllm
    assert printed["queue_depth"] == 3


def test_the_call_clock_keeps_the_latest_call_of_all_workers(redis_client: redis.Redis) -> None:
    first, second = CallClock(redis_client), CallClock(redis_client)
    second.note("big")
    second.flush()
    latest = redis_client.zscore(keys.last_calls(), "big")
    first._pending["big"] = ms_ago(60)  # a worker that called a minute ago writes late
    first.flush()
    assert redis_client.zscore(keys.last_calls(), "big") == latest
    first.note(None)  # a call outside any endpoint: nothing
    first.close()
    second.close()
    assert redis_client.zcard(keys.last_calls()) == 1


def test_a_worker_notes_its_last_call(
    redis_url: str, redis_client: redis.Redis, simulator: SimulatorControl, start_worker: Any,
    celery_client: Any,
) -> None:  # fmt: skip
    start_worker(redis_url, simulator.url)
    request = {"prompt": "Hi", "params": {"max_tokens": 2}}
    celery_client.send_task("genqueue.generate", kwargs={"request": request}).get(timeout=30)
    deadline = time.monotonic() + 5
    while redis_client.zscore(keys.last_calls(), "default") is None:
        assert time.monotonic() < deadline, "the worker noted no call"
        time.sleep(0.1)
    settings = Settings(redis_url=redis_url, runpod_endpoint_url=simulator.url)
    (default,) = read_signals(redis_client, load_endpoints(settings))
    assert default.since_last_call_s is not None and default.since_last_call_s < 5
