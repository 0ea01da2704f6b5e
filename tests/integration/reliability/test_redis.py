"""Redis restarts, goes away, or fills up: nothing lost, nothing half-stored, clear errors."""

from __future__ import annotations

import time

import pytest
import redis
import requests
from celery import Celery

from tests.integration.reliability.conftest import queued_messages

pytestmark = pytest.mark.timeout(120)

BODY = {"prompt": "How can I make a cake?", "params": {"max_tokens": 6}}


def submit(api, auth, body=BODY):
    return requests.post(f"{api.url}/v1/tasks", json=body, headers=auth, timeout=10)


def status(api, auth, task_id, wait=0):
    url = f"{api.url}/v1/tasks/{task_id}?wait={wait}"
    return requests.get(url, headers=auth, timeout=wait + 10).json()


def restart(server) -> None:
    server.stop()
    server.start()


def test_queued_tasks_and_results_survive_a_restart(
    own_redis, api_factory, auth, simulator, start_worker
) -> None:
    api = api_factory(own_redis.url)
    ids = [submit(api, auth).json()["task_id"] for _ in range(5)]
    restart(own_redis)  # AOF: the queue and the records come back
    client = redis.Redis.from_url(own_redis.url)
    assert queued_messages(client) == 5
    start_worker(own_redis.url, simulator.url)
    finished = [status(api, auth, task_id, wait=30) for task_id in ids]
    assert [s["status"] for s in finished] == ["succeeded"] * 5
    restart(own_redis)
    again = [status(api, auth, task_id) for task_id in ids]
    assert [s["result"] for s in again] == [s["result"] for s in finished]
    celery = Celery(broker=own_redis.url, backend=own_redis.url, set_as_current=False)
    assert celery.AsyncResult(ids[0]).get(timeout=10) == finished[0]["result"]
    celery.close()
    assert simulator.stats()["calls"] == 5


def test_workers_and_api_reconnect_after_a_restart(
    own_redis, api_factory, auth, simulator, start_worker
) -> None:
    api = api_factory(own_redis.url)
    worker = start_worker(own_redis.url, simulator.url)
    first = submit(api, auth).json()["task_id"]
    assert status(api, auth, first, wait=30)["status"] == "succeeded"
    own_redis.stop()
    time.sleep(2)
    own_redis.start()
    deadline = time.monotonic() + 30
    response = submit(api, auth)
    while response.status_code != 202 and time.monotonic() < deadline:
        time.sleep(0.5)
        response = submit(api, auth)
    assert response.status_code == 202
    second = response.json()["task_id"]
    assert status(api, auth, second, wait=60)["status"] == "succeeded"
    assert worker.process.poll() is None


def test_api_answers_503_quickly_while_redis_is_down(own_redis, api_factory, auth) -> None:
    api = api_factory(own_redis.url)
    assert submit(api, auth).status_code == 202
    own_redis.stop()
    started = time.monotonic()
    refused = submit(api, auth)
    assert refused.status_code == 503
    assert "Redis is unreachable" in refused.json()["detail"]
    assert time.monotonic() - started < 3
    assert requests.get(f"{api.url}/readyz", timeout=5).status_code == 503
    own_redis.start()
    assert requests.get(f"{api.url}/readyz", timeout=5).status_code == 200
    assert submit(api, auth).status_code == 202


def fill_past_maxmemory(client: redis.Redis) -> None:
    """Store about 4 MB, then set ``maxmemory`` 1 MB under what Redis uses (``noeviction``): every
    write is refused, and no buffer a request frees (at most a few KB here) brings Redis back
    under the limit. Filling up to the limit instead leaves it a freed buffer away from room."""
    filler = "x" * 100_000
    for i in range(40):
        client.set(f"filler:{i}", filler)
    used_bytes = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", str(used_bytes - 1_000_000))
    with pytest.raises(redis.ResponseError, match="maxmemory"):
        client.set("probe", "y")


def test_a_full_redis_refuses_and_stores_nothing(own_redis, api_factory, auth) -> None:
    api = api_factory(own_redis.url)
    client = redis.Redis.from_url(own_redis.url)
    fill_past_maxmemory(client)
    before = set(client.keys("genqueue:*"))
    refused = submit(api, auth)
    assert refused.status_code == 503
    assert "out of memory" in refused.json()["detail"]
    batch = requests.post(
        f"{api.url}/v1/tasks/batch", json={"requests": [BODY, BODY]}, headers=auth, timeout=10
    )
    assert batch.status_code == 503
    assert set(client.keys("genqueue:*")) == before
    assert queued_messages(client) == 0
