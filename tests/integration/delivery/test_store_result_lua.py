"""worker/delivery/scripts/store_result.lua on its own, against a real Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis
from redis.commands.core import Script

from worker import lua

KEY = "celery-task-meta-t-1"


@pytest.fixture
def store(redis_client: redis.Redis) -> Script:
    return lua.register(redis_client, "worker.delivery", "store_result")


def _meta(status: str) -> str:
    return json.dumps({"status": status, "result": None, "task_id": "t-1"})


def test_writes_the_meta_with_its_ttl_and_publishes_it(
    store: Script, redis_client: redis.Redis
) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(KEY)
    try:
        assert store(keys=[KEY], args=[_meta("RETRY"), 600, "SUCCESS"]) == 1
        message = None
        deadline = time.monotonic() + 5
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
    finally:
        pubsub.close()
    assert json.loads(redis_client.get(KEY))["status"] == "RETRY"
    assert 590 <= redis_client.ttl(KEY) <= 600
    assert message is not None and message["data"] == _meta("RETRY").encode()


def test_a_ttl_of_zero_stores_for_ever(store: Script, redis_client: redis.Redis) -> None:
    assert store(keys=[KEY], args=[_meta("STARTED"), 0, "SUCCESS"]) == 1
    assert redis_client.ttl(KEY) == -1


def test_a_stored_success_is_left_untouched(store: Script, redis_client: redis.Redis) -> None:
    redis_client.set(KEY, _meta("SUCCESS"), ex=100)
    assert store(keys=[KEY], args=[_meta("FAILURE"), 600, "SUCCESS"]) == 0
    assert json.loads(redis_client.get(KEY))["status"] == "SUCCESS"
    assert redis_client.ttl(KEY) <= 100


@pytest.mark.parametrize("stored", [_meta("RETRY"), "not json", "[1, 2]", '"SUCCESS"'])
def test_anything_but_a_success_is_overwritten(
    store: Script, redis_client: redis.Redis, stored: str
) -> None:
    redis_client.set(KEY, stored)
    assert store(keys=[KEY], args=[_meta("FAILURE"), 600, "SUCCESS"]) == 1
    assert json.loads(redis_client.get(KEY))["status"] == "FAILURE"
