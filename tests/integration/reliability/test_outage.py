"""Redis goes away while tasks are in flight: a finished generation is stored once Redis is back,
the endpoint is called once, and an outage longer than GENQUEUE_REDIS_OUTAGE_S is given up
in a clear way, with nothing half-written."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
import requests
from celery import Celery

from tests.integration.reliability.conftest import wait_for

pytestmark = pytest.mark.timeout(150)

BODY = {"prompt": "How can I make a cake?", "params": {"max_tokens": 6}}


def submit(api: Any, auth: dict[str, str]) -> str:
    response = requests.post(f"{api.url}/v1/tasks", json=BODY, headers=auth, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def status(api: Any, auth: dict[str, str], task_id: str, wait: float = 0) -> dict[str, Any]:
    """The task's status, asking again while the API cannot reach Redis yet."""
    deadline = time.monotonic() + wait + 30
    while True:
        url = f"{api.url}/v1/tasks/{task_id}?wait={wait}"
        response = requests.get(url, headers=auth, timeout=wait + 10)
        if response.status_code == 200 or time.monotonic() > deadline:
            return dict(response.json())
        time.sleep(0.5)


def final(api: Any, auth: dict[str, str], task_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = status(api, auth, task_id, wait=5)
        if found["status"] in ("succeeded", "failed", "cancelled"):
            return found
        assert time.monotonic() < deadline, f"task {task_id} still {found['status']}"


def celery_result(url: str, task_id: str) -> Any:
    celery = Celery(broker=url, backend=url, set_as_current=False)
    try:
        return celery.AsyncResult(task_id).get(timeout=10)
    finally:
        celery.close()


def in_flight(simulator: Any) -> int:
    return int(simulator.stats()["in_flight"])


def test_a_call_that_ends_while_redis_is_down_is_stored_when_it_is_back(
    own_redis, api_factory, auth, simulator, start_worker
) -> None:
    api = api_factory(own_redis.url)
    worker = start_worker(own_redis.url, simulator.url)
    simulator.configure(latency_s=2.5)
    task_id = submit(api, auth)
    wait_for(lambda: in_flight(simulator) == 1, 15, "the endpoint call")
    own_redis.stop()
    wait_for(lambda: in_flight(simulator) == 0, 15, "the end of the call")
    time.sleep(3)  # the worker finds Redis away when it stores the result
    own_redis.start()
    done = final(api, auth, task_id)
    assert done["status"] == "succeeded", done
    assert done["result"]["usage"]["completion_tokens"] == 6
    assert celery_result(own_redis.url, task_id) == done["result"]
    assert simulator.stats()["calls"] == 1
    assert worker.process.poll() is None
    assert "Redis is unreachable" in worker.log()


def test_a_task_whose_start_meets_an_outage_starts_when_redis_is_back(
    own_redis, simulator, start_worker
) -> None:
    start_worker(own_redis.url, simulator.url)
    client = redis.Redis.from_url(own_redis.url)
    celery = Celery(broker=own_redis.url, backend=own_redis.url, set_as_current=False)
    # The worker holds a message with a countdown, and starts it when the countdown is over.
    sent = celery.send_task("genqueue.generate", kwargs={"request": BODY}, countdown=3)
    celery.close()
    wait_for(lambda: client.hlen("unacked") == 1, 15, "the worker to hold the message")
    client.close()
    own_redis.stop()
    time.sleep(5)  # the countdown ends while Redis is away
    assert simulator.stats()["calls"] == 0
    own_redis.start()
    result = celery_result_within(own_redis.url, sent.id, 60)
    assert result["usage"]["completion_tokens"] == 6
    assert simulator.stats()["calls"] == 1


def celery_result_within(url: str, task_id: str, timeout_s: float) -> Any:
    celery = Celery(broker=url, backend=url, set_as_current=False)
    try:
        return celery.AsyncResult(task_id).get(timeout=timeout_s)
    finally:
        celery.close()


@pytest.mark.parametrize(
    "status_code",
    [503, 500],  # a 500 is also judged (is it this request's fault?), from the task's record
)
def test_a_retry_scheduled_while_redis_is_down_runs_when_it_is_back(
    own_redis, api_factory, auth, simulator, start_worker, status_code
) -> None:
    api = api_factory(own_redis.url)
    worker = start_worker(own_redis.url, simulator.url)
    simulator.script({"status": status_code, "delay_s": 2.5})
    task_id = submit(api, auth)
    wait_for(lambda: in_flight(simulator) == 1, 15, "the first endpoint call")
    own_redis.stop()
    wait_for(lambda: in_flight(simulator) == 0, 15, "the end of the first call")
    time.sleep(3)  # the retry is scheduled while Redis is away
    own_redis.start()
    done = final(api, auth, task_id)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert simulator.stats()["calls"] == 2
    assert worker.process.poll() is None


def test_an_outage_longer_than_the_claim_does_not_hand_the_call_to_another_worker(
    own_redis, api_factory, auth, simulator, start_worker
) -> None:
    # Claims lapse after about 3 s and messages look abandoned after 5 s without renewal;
    # Redis stays away for 8 s while the one call runs.
    fast = {"GENQUEUE_VISIBILITY_TIMEOUT_S": "5", "GENQUEUE_HEARTBEAT_INTERVAL_S": "1"}
    api = api_factory(own_redis.url)
    workers = [start_worker(own_redis.url, simulator.url, **fast) for _ in range(2)]
    simulator.script({"delay_s": 14})
    task_id = submit(api, auth)
    wait_for(lambda: in_flight(simulator) == 1, 15, "the endpoint call")
    time.sleep(1)
    own_redis.stop()
    time.sleep(8)
    own_redis.start()
    done = final(api, auth, task_id, timeout_s=90)
    assert done["status"] == "succeeded", done
    assert simulator.stats()["calls"] == 1
    time.sleep(6)  # no copy of the task runs later either
    assert simulator.stats()["calls"] == 1
    assert all(worker.process.poll() is None for worker in workers)


def test_an_outage_past_the_budget_is_given_up_clearly_and_reported_consistently(
    own_redis, api_factory, auth, simulator, start_worker
) -> None:
    api = api_factory(own_redis.url)
    worker = start_worker(own_redis.url, simulator.url, GENQUEUE_REDIS_OUTAGE_S="3")
    simulator.configure(latency_s=2)
    task_id = submit(api, auth)
    wait_for(lambda: in_flight(simulator) == 1, 15, "the endpoint call")
    own_redis.stop()
    wait_for(lambda: "gave up" in worker.log(), 20, "the worker to give up")
    own_redis.start()
    done = final(api, auth, task_id, timeout_s=90)
    # The result kept in memory is stored when the task's message comes back to this worker.
    assert done["status"] == "succeeded", done
    assert simulator.stats()["calls"] == 1
    assert celery_result(own_redis.url, task_id) == done["result"]
    assert f"task {task_id}: Redis is unreachable for more than 3s; gave up" in worker.log()
    assert worker.process.poll() is None
