"""Flow control: the circuit breaker, deadlines, cancellation, and keys that expire."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from tests.integration.reliability.conftest import send, wait_for
from worker.errors import PermanentEndpointError

pytestmark = pytest.mark.timeout(120)

FAST_RETRIES = {"GENQUEUE_RETRY_BASE_DELAY_S": 0.1, "GENQUEUE_RETRY_MAX_DELAY_S": 0.2}


def test_circuit_breaker_holds_calls_back_without_spending_attempts(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    settings = {
        **FAST_RETRIES,
        "GENQUEUE_BREAKER_FAILURE_THRESHOLD": 3,
        "GENQUEUE_BREAKER_COOLDOWN_S": 3,
        "GENQUEUE_RETRY_MAX_ATTEMPTS": 5,
    }
    start_worker(redis_url, simulator.url, **settings)
    start_worker(redis_url, simulator.url, **settings)
    simulator.script(*[{"status": 503}] * 3)
    result = send(celery_client, "through the outage")
    assert result.get(timeout=60)["text"]
    times = simulator.stats()["call_times"]
    assert len(times) == 4
    # Retries were 0.2 s apart at most; the breaker held the fourth call for its cooldown.
    assert times[1] - times[0] < 1 and times[2] - times[1] < 1
    assert times[3] - times[2] >= 2.9
    record = redis_client.hgetall(f"genqueue:task:{result.id}")
    assert record[b"attempts"] == b"4"  # three failures and the probe; no attempt while open


def test_open_breaker_is_shared_by_all_workers(
    redis_url, simulator, start_worker, celery_client
) -> None:
    settings = {
        **FAST_RETRIES,
        "GENQUEUE_BREAKER_FAILURE_THRESHOLD": 2,
        "GENQUEUE_BREAKER_COOLDOWN_S": 3,
        "GENQUEUE_RETRY_MAX_ATTEMPTS": 10,
    }
    start_worker(redis_url, simulator.url, **settings)
    start_worker(redis_url, simulator.url, **settings)
    simulator.configure(fail_rate=1.0, fail_status=500)
    results = [send(celery_client, f"n{i}") for i in range(6)]
    wait_for(lambda: simulator.stats()["calls"] >= 2, 20, "the first failures")
    time.sleep(1.0)
    calls_when_open = simulator.stats()["calls"]
    time.sleep(1.5)
    assert simulator.stats()["calls"] == calls_when_open  # nobody calls while it is open
    simulator.configure(fail_rate=0.0)
    assert all(r.get(timeout=60)["text"] for r in results)


def test_expired_deadline_is_never_sent(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    deadline = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    result = send(celery_client, "too late", deadline=deadline)
    time.sleep(1.5)
    start_worker(redis_url, simulator.url)
    with pytest.raises(Exception, match="deadline"):
        result.get(timeout=30)
    error = json.loads(redis_client.hget(f"genqueue:task:{result.id}", "error"))
    assert error["type"] == "expired"
    assert simulator.stats()["calls"] == 0


def test_deadline_stops_retries(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    start_worker(redis_url, simulator.url)
    simulator.script({"status": 429, "retry_after": "5"})
    deadline = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    result = send(celery_client, "hurry", deadline=deadline)
    with pytest.raises(Exception, match="deadline"):
        result.get(timeout=30)
    error = json.loads(redis_client.hget(f"genqueue:task:{result.id}", "error"))
    assert error["type"] == "expired"
    assert simulator.stats()["calls"] == 1


def test_cancel_a_running_task_aborts_its_call(
    redis_url, api_factory, auth, simulator, start_worker, celery_client
) -> None:
    simulator.script("hang")  # answers never; ends when the client hangs up
    worker = start_worker(redis_url, simulator.url)
    api = api_factory(redis_url)
    body = {"prompt": "long", "params": {"max_tokens": 5}}
    task_id = requests.post(f"{api.url}/v1/tasks", json=body, headers=auth, timeout=10).json()[
        "task_id"
    ]
    wait_for(lambda: simulator.stats()["in_flight"] == 1, 20, "the call")
    started = time.monotonic()
    response = requests.delete(f"{api.url}/v1/tasks/{task_id}", headers=auth, timeout=15)
    assert response.json()["status"] == "cancelled", worker.log()[-3000:]
    assert time.monotonic() - started < 5
    assert celery_client.AsyncResult(task_id).state == "REVOKED"
    wait_for(lambda: simulator.stats()["in_flight"] == 0, 10, "the aborted call")
    assert simulator.stats()["calls"] == 1


def test_cancel_a_queued_task_never_reaches_the_endpoint(
    redis_url, api_factory, auth, simulator, start_worker, celery_client
) -> None:
    api = api_factory(redis_url)
    body = {"prompt": "never", "params": {"max_tokens": 5}}
    task_id = requests.post(f"{api.url}/v1/tasks", json=body, headers=auth, timeout=10).json()[
        "task_id"
    ]
    assert (
        requests.delete(f"{api.url}/v1/tasks/{task_id}", headers=auth, timeout=10).json()["status"]
        == "cancelled"
    )
    start_worker(redis_url, simulator.url)
    follower = send(celery_client, "after it")
    assert follower.get(timeout=30)["text"]  # the cancelled one was taken and dropped first
    assert simulator.stats()["calls"] == 1
    status = requests.get(f"{api.url}/v1/tasks/{task_id}", headers=auth, timeout=10).json()
    assert status["status"] == "cancelled"
    assert celery_client.AsyncResult(task_id).state == "REVOKED"


# genqueue:events is a stream capped by XADD MAXLEN ~ GENQUEUE_EVENTS_MAXLEN.
BOUNDED_WITHOUT_TTL = ("_kombu.", "unacked", "genqueue:dead", "genqueue:events")


def test_every_key_expires_or_is_bounded(
    redis_url, redis_client, api_factory, auth, simulator, start_worker, celery_client
) -> None:
    start_worker(redis_url, simulator.url, **FAST_RETRIES)
    api = api_factory(redis_url)
    headers = {**auth, "Idempotency-Key": "k1"}
    ok = requests.post(f"{api.url}/v1/tasks", json={"prompt": "a"}, headers=headers, timeout=10)
    status = requests.get(
        f"{api.url}/v1/tasks/{ok.json()['task_id']}?wait=20", headers=auth, timeout=30
    ).json()
    assert status["status"] == "succeeded"
    # One task at a time from here, so each scripted answer goes to the task it is meant for.
    simulator.script({"status": 500}, "ok")
    send(celery_client, "b").get(timeout=30)
    simulator.script({"status": 400})
    with pytest.raises(PermanentEndpointError):
        send(celery_client, "c").get(timeout=30)
    time.sleep(0.5)
    unbounded = []
    for key in redis_client.scan_iter(count=1000):
        name = key.decode()
        if redis_client.ttl(key) > 0 or name.startswith(BOUNDED_WITHOUT_TTL):
            continue
        if redis_client.type(key) == b"list" and redis_client.llen(key) == 0:
            continue
        unbounded.append(name)
    assert unbounded == []


def test_requests_per_minute_are_shared_by_all_workers(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    """Three calls a minute, two workers: the fourth task waits for the next minute."""
    limits = {"GENQUEUE_ENDPOINT_REQUESTS_PER_MINUTE": 3}
    start_worker(redis_url, simulator.url, **limits)
    start_worker(redis_url, simulator.url, **limits)
    if time.time() % 60 > 45:  # keep the whole test inside one minute window
        time.sleep(61 - time.time() % 60)
    results = [send(celery_client, f"n{i}") for i in range(4)]
    wait_for(lambda: sum(r.ready() for r in results) == 3, 20, "three tasks")
    time.sleep(1.5)
    assert sum(r.ready() for r in results) == 3
    assert simulator.stats()["calls"] == 3
    waiting = next(r for r in results if not r.ready())
    record = redis_client.hgetall(f"genqueue:task:{waiting.id}")
    assert record.get(b"attempts", b"0") == b"0"  # waiting spends no attempt
    assert redis_client.hget("genqueue:rate-limit:default", "r") == b"3"
