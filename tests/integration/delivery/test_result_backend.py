"""worker.delivery.result_backend.ResultBackend against a real Redis: Celery's state writes, made
atomic."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery, states

from worker.delivery.result_backend import ResultBackend

TASK_ID = "t-1"
KEY = f"celery-task-meta-{TASK_ID}"


@pytest.fixture
def backend(redis_url: str) -> Iterator[ResultBackend]:
    app = Celery(set_as_current=False, backend=redis_url)
    app.conf.result_expires = 600
    yield ResultBackend(app=app, url=redis_url)
    app.close()


def _next_message(pubsub: redis.client.PubSub) -> dict | None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message is not None:
            return message
    return None


def _status(client: redis.Redis) -> str:
    return json.loads(client.get(KEY))["status"]


def test_a_retry_never_overwrites_a_stored_success(
    backend: ResultBackend, redis_client: redis.Redis
) -> None:
    # What genqueue's end script writes when the next run of a retried task succeeds.
    redis_client.set(KEY, json.dumps({"status": "SUCCESS", "result": {"text": "hi"}}))
    backend.mark_as_retry(TASK_ID, RuntimeError("try again"))
    backend.mark_as_failure(TASK_ID, RuntimeError("late failure"))

    assert json.loads(redis_client.get(KEY)) == {"status": "SUCCESS", "result": {"text": "hi"}}


def test_states_are_stored_with_celerys_meta_expiry_and_message(
    backend: ResultBackend, redis_client: redis.Redis
) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(KEY)
    try:
        backend.mark_as_retry(TASK_ID, RuntimeError("try again"))
        assert _status(redis_client) == states.RETRY
        assert 590 <= redis_client.ttl(KEY) <= 600
        published = _next_message(pubsub)
        assert published is not None and json.loads(published["data"])["status"] == states.RETRY

        backend.mark_as_failure(TASK_ID, ValueError("bad"))
        meta = backend.get_task_meta(TASK_ID, cache=False)
        assert meta["status"] == states.FAILURE
        assert isinstance(meta["result"], ValueError) and str(meta["result"]) == "bad"
        assert meta["task_id"] == TASK_ID
    finally:
        pubsub.close()
