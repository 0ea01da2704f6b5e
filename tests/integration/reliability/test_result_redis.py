"""A Redis of its own for the results (``GENQUEUE_RESULT_REDIS_URL``): a real worker and API on
two Redis servers; the results land in the second and are read there through every door, and
either Redis going away mid-task, or a worker dying between the two writes of a task's end,
neither loses a result nor calls the endpoint twice."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests

from genqueue.embedded_redis import EmbeddedRedis
from tests.integration.api.conftest import API_TENANT
from tests.integration.observability.conftest import Receiver, receiver
from tests.integration.reliability.conftest import send, wait_for
from tests.integration.reliability.test_outage import BODY, final, in_flight, status, submit
from worker import keys
from worker.celery_app import GenQueueCelery, celery_config
from worker.delivery.dead_letters import DeadLetters
from worker.delivery.task_scripts import celery_meta
from worker.observability.completion_stream import EVENTS_STREAM
from worker.settings import Settings

pytestmark = pytest.mark.timeout(150)

__all__ = ["receiver"]  # a fixture of tests/integration/observability, used here


@pytest.fixture
def results(own_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client on the results' Redis (the test's own server, which it may stop)."""
    client = redis.Redis.from_url(own_redis.url)
    yield client
    client.close()


def celery_app(redis_url: str, result_redis_url: str) -> GenQueueCelery:
    """A plain Celery client configured as genqueue's workers are."""
    settings = Settings(redis_url=redis_url, result_redis_url=result_redis_url)
    app = GenQueueCelery("client", set_as_current=False)
    app.genqueue_settings = settings
    app.config_from_object(celery_config(settings))
    return app


def result_keys(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(match=f"{keys.CELERY_RESULT_PREFIX}*", count=1000))


def test_results_live_in_the_result_redis_and_every_reader_finds_them(
    redis_url: str,
    redis_client: redis.Redis,
    own_redis: EmbeddedRedis,
    results: redis.Redis,
    api_factory: Any,
    auth: dict[str, str],
    simulator: Any,
    start_worker: Any,
) -> None:
    api = api_factory(redis_url, result_redis_url=own_redis.url)
    start_worker(redis_url, simulator.url, GENQUEUE_RESULT_REDIS_URL=own_redis.url)

    task_id = submit(api, auth)
    done = status(api, auth, task_id, wait=20)
    assert done["status"] == "succeeded", done
    assert done["result"]["usage"]["completion_tokens"] == 6

    app = celery_app(redis_url, own_redis.url)
    try:
        # Celery's AsyncResult reads the results' Redis, as the worker's backend wrote it.
        assert app.AsyncResult(task_id).get(timeout=10) == done["result"]
        sent = send(app, "plain Celery", params={"max_tokens": 6}, tenant=API_TENANT)
        plain = sent.get(timeout=30)
    finally:
        app.close()
    assert plain["usage"]["completion_tokens"] == 6
    # The plain Celery task, sent for the key's tenant, is readable through the API too.
    assert status(api, auth, sent.id)["result"] == plain

    # Nothing but the results in the results' Redis, and none of them in REDIS_URL's.
    assert sorted(results.keys()) == sorted(
        keys.celery_result(t).encode() for t in (task_id, sent.id)
    )
    assert result_keys(redis_client) == []
    assert json.loads(results.get(keys.celery_result(task_id)) or "{}")["status"] == "SUCCESS"
    # The records, the completion stream and the queues stay in REDIS_URL's Redis.
    assert redis_client.exists(keys.task_record(task_id)) == 1
    assert redis_client.xlen(EVENTS_STREAM) == 2
    assert results.exists(keys.task_record(task_id), EVENTS_STREAM) == 0
    assert simulator.stats()["calls"] == 2


def test_a_queued_task_cancelled_is_revoked_in_the_result_redis_and_never_called(
    redis_url: str,
    redis_client: redis.Redis,
    own_redis: EmbeddedRedis,
    results: redis.Redis,
    api_factory: Any,
    auth: dict[str, str],
    simulator: Any,
    start_worker: Any,
) -> None:
    api = api_factory(redis_url, result_redis_url=own_redis.url)
    task_id = submit(api, auth)  # no worker yet: it waits in the queue
    channel = keys.celery_result(task_id).encode()
    with ThreadPoolExecutor(1) as pool:
        # A ?wait= listens on the results' Redis, and the cancellation's REVOKED wakes it.
        waiting = pool.submit(status, api, auth, task_id, 30)
        wait_for(lambda: channel in results.pubsub_channels(), 10, "the wait's subscription")
        assert channel not in redis_client.pubsub_channels()
        response = requests.delete(f"{api.url}/v1/tasks/{task_id}", headers=auth, timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"
        assert waiting.result(timeout=10)["status"] == "cancelled"
    meta = json.loads(results.get(keys.celery_result(task_id)) or "{}")
    assert meta["status"] == "REVOKED"
    assert redis_client.hget(keys.task_record(task_id), "cancel_requested") == b"1"

    start_worker(redis_url, simulator.url, GENQUEUE_RESULT_REDIS_URL=own_redis.url)
    wait_for(lambda: redis_client.xlen(EVENTS_STREAM) == 1, 20, "the worker to drop the task")
    assert status(api, auth, task_id)["status"] == "cancelled"
    assert simulator.stats()["calls"] == 0


def test_a_task_whose_worker_died_after_storing_its_success_is_not_called_again(
    redis_url: str,
    redis_client: redis.Redis,
    own_redis: EmbeddedRedis,
    results: redis.Redis,
    api_factory: Any,
    auth: dict[str, str],
    simulator: Any,
    start_worker: Any,
) -> None:
    """What a worker killed between its two writes leaves: the success in the results' Redis,
    the message back in the queue (kombu restores an unacknowledged message), the record not
    finished. The next worker ends the task from the stored success, without a call."""
    api = api_factory(redis_url, result_redis_url=own_redis.url)
    task_id = submit(api, auth)
    stored = {
        "text": "stored before the worker died",
        "finish_reason": "stop",
        "model": "m",
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        "latency_ms": 40,
        "endpoint": "default",
    }
    results.set(keys.celery_result(task_id), celery_meta(task_id, "SUCCESS", stored, done=True))

    start_worker(redis_url, simulator.url, GENQUEUE_RESULT_REDIS_URL=own_redis.url)
    wait_for(lambda: redis_client.xlen(EVENTS_STREAM) == 1, 20, "the task's end")
    done = status(api, auth, task_id)
    assert done["status"] == "succeeded"
    assert done["result"]["text"] == "stored before the worker died"
    assert done["finished_at"] is not None
    assert simulator.stats()["calls"] == 0
    entry = redis_client.xrange(EVENTS_STREAM)[0][1]
    assert (entry[b"task_id"], entry[b"status"]) == (task_id.encode(), b"succeeded")
    assert redis_client.zcard(keys.inbox()) == 0  # ended: the lost-message sweep forgets it


@pytest.mark.parametrize("away", ["broker", "results"])
def test_either_redis_away_at_the_end_of_a_call_stores_the_result_once(
    away: str,
    redis_url: str,
    own_redis: EmbeddedRedis,
    api_factory: Any,
    auth: dict[str, str],
    simulator: Any,
    start_worker: Any,
) -> None:
    """The Redis that goes away is the test's own server: as the broker (the success is
    stored in the results' Redis, the end script waits for the broker) or as the results'
    Redis (the success waits for it, then the end script runs)."""
    broker_url, results_url = (
        (own_redis.url, redis_url) if away == "broker" else (redis_url, own_redis.url)
    )
    api = api_factory(broker_url, result_redis_url=results_url)
    worker = start_worker(broker_url, simulator.url, GENQUEUE_RESULT_REDIS_URL=results_url)
    simulator.configure(latency_s=2.5)
    task_id = submit(api, auth)
    wait_for(lambda: in_flight(simulator) == 1, 15, "the endpoint call")
    own_redis.stop()
    wait_for(lambda: in_flight(simulator) == 0, 15, "the end of the call")
    ready = requests.get(f"{api.url}/readyz", timeout=10)
    assert ready.status_code == 503, ready.text
    read = requests.get(f"{api.url}/v1/tasks/{task_id}", headers=auth, timeout=10)
    assert read.status_code == 503, read.text  # a status needs both: said, not guessed
    time.sleep(3)  # the worker finds that Redis away when it ends the task
    own_redis.start()

    done = final(api, auth, task_id)
    assert done["status"] == "succeeded", done
    assert done["result"]["usage"]["completion_tokens"] == 6
    assert simulator.stats()["calls"] == 1
    assert worker.process.poll() is None
    assert "Redis is unreachable" in worker.log()
    assert requests.get(f"{api.url}/readyz", timeout=10).status_code == 200


def test_a_requeued_dead_letter_starts_afresh_in_the_result_redis(
    redis_url: str,
    redis_client: redis.Redis,
    own_redis: EmbeddedRedis,
    results: redis.Redis,
    api_factory: Any,
    auth: dict[str, str],
    simulator: Any,
    start_worker: Any,
    tmp_path: Any,
) -> None:
    """``genqueue dead requeue`` deletes the old outcome from the results' Redis before the
    task is sent again, so its new run is not read as the old failure."""
    api = api_factory(redis_url, result_redis_url=own_redis.url)
    task_id = submit(api, auth)
    # As if it had run and failed: its message gone, its failure stored, its letter kept.
    assert redis_client.delete(*keys.queue_lists(keys.GENERAL_QUEUES)) == 1
    failure = {"exc_type": "PoisonTask", "exc_message": ["delivered 3 times"]}
    results.set(keys.celery_result(task_id), celery_meta(task_id, "FAILURE", failure, done=True))
    DeadLetters(redis_client, 10).add(task_id, BODY, "delivered 3 times")
    assert status(api, auth, task_id)["status"] == "failed"

    env = {"REDIS_URL": redis_url, "GENQUEUE_RESULT_REDIS_URL": own_redis.url, "PATH": "/usr/bin"}
    requeued = subprocess.run(
        [sys.executable, "-m", "genqueue", "dead", "requeue", task_id],
        env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    assert requeued.returncode == 0, requeued.stderr
    assert results.exists(keys.celery_result(task_id)) == 0
    assert status(api, auth, task_id)["status"] == "queued"

    start_worker(redis_url, simulator.url, GENQUEUE_RESULT_REDIS_URL=own_redis.url)
    done = final(api, auth, task_id)
    assert done["status"] == "succeeded", done
    assert simulator.stats()["calls"] == 1


def test_a_webhook_carries_the_result_read_from_the_result_redis(
    redis_url: str,
    own_redis: EmbeddedRedis,
    api_factory: Any,
    auth: dict[str, str],
    simulator: Any,
    start_worker: Any,
    receiver: Receiver,
) -> None:
    secret = "whsec-test-0123456789"
    hooks = {"webhook_secret": secret, "webhook_allowlist": "127.0.0.1"}
    start_worker(
        redis_url, simulator.url, GENQUEUE_RESULT_REDIS_URL=own_redis.url,
        **{f"GENQUEUE_{name.upper()}": value for name, value in hooks.items()},
    )  # fmt: skip
    api = api_factory(redis_url, result_redis_url=own_redis.url, **hooks)
    body = {**BODY, "webhook_url": f"{receiver.url}/hook"}
    sent = requests.post(f"{api.url}/v1/tasks", json=body, headers=auth, timeout=10)
    assert sent.status_code == 202, sent.text
    done = status(api, auth, sent.json()["task_id"], wait=20)
    assert done["status"] == "succeeded"
    wait_for(lambda: receiver.received, 20, "the webhook")
    assert json.loads(receiver.received[0].body) == done  # the result included
