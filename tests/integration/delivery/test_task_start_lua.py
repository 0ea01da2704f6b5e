"""worker/delivery/scripts/task_start.lua on its own, against a real Redis (through
worker.delivery.task_scripts.Lifecycle.begin: tests/integration/delivery/test_lifecycle.py)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from redis.commands.core import Script

from worker import keys, lua

TASK, EP = "t1", "ep"
RECORD, RESULT, RUNNING = keys.task_record(TASK), keys.celery_result(TASK), keys.running(TASK)
STARTED = json.dumps({"status": "STARTED", "result": {"pid": 1}, "task_id": TASK})
OFFER_KEYS = [
    keys.lease(EP),
    keys.breaker(EP),
    keys.breaker_probe(EP),
    keys.rate(EP),
    RUNNING,
    RECORD,
]
MAX_DELIVERIES = 3


@pytest.fixture
def start(redis_client: redis.Redis) -> Script:
    return lua.register(redis_client, "worker.delivery", "task_start")


def _start(script: Script, offer: bool = False, rpm: int = 0, result_apart: str = "") -> list[Any]:
    script_keys = [RECORD, RESULT]
    args = ["2026-01-01T00:00:00", "deliveries:0", 600, 300, STARTED, result_apart]
    if offer:
        script_keys += OFFER_KEYS
        # max deliveries, then the offer: limit, lease ttl, slot token, cooldown, rpm, tpm, claim
        args += [MAX_DELIVERIES, 1, 30_000, "slot-1", 30_000, rpm, 0, "claim-1", 20_000, "default"]
    return script(keys=script_keys, args=args)


def test_a_first_delivery_is_counted_and_started(start: Script, redis_client: redis.Redis) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(RESULT)
    try:
        deliveries, fields, meta, slot = _start(start)
        message = None
        deadline = time.monotonic() + 5
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
    finally:
        pubsub.close()

    assert (deliveries, fields, meta, slot) == (1, [None] * 7, None, None)
    assert redis_client.hgetall(RECORD) == {
        b"created_at": b"2026-01-01T00:00:00",
        b"deliveries:0": b"1",
        b"delivery_field": b"deliveries:0",  # which field a wait for a slot forgives
    }
    assert 590 <= redis_client.ttl(RECORD) <= 600
    assert redis_client.get(RESULT) == STARTED.encode()
    assert 290 <= redis_client.ttl(RESULT) <= 300
    assert message is not None and message["data"] == STARTED.encode()


def test_a_redelivery_reads_the_progress_and_keeps_created_at(
    start: Script, redis_client: redis.Redis
) -> None:
    redis_client.hset(
        RECORD,
        mapping={"created_at": "earlier", "attempts": 2, "endpoints_tried": "a,b", "polls": 4},
    )
    _start(start)
    deliveries, fields, _, _ = _start(start)
    assert deliveries == 2
    assert fields == [b"2", None, None, None, b"a,b", None, b"4"]
    assert redis_client.hget(RECORD, "created_at") == b"earlier"


def test_a_stored_success_is_returned_untouched_and_no_slot_is_tried(
    start: Script, redis_client: redis.Redis
) -> None:
    success = json.dumps({"status": "SUCCESS", "result": {"text": "hi"}})
    redis_client.set(RESULT, success)
    _, _, meta, slot = _start(start, offer=True)
    assert meta == success.encode()
    assert slot is None
    assert redis_client.get(RESULT) == success.encode()
    assert redis_client.exists(RUNNING, keys.lease(EP)) == 0


def test_a_cancelled_task_is_not_started_and_tries_no_slot(
    start: Script, redis_client: redis.Redis
) -> None:
    redis_client.hset(RECORD, "cancel_requested", "1")
    _, fields, _, slot = _start(start, offer=True)
    assert fields[2] == b"1"
    assert slot is None
    assert redis_client.exists(RESULT, RUNNING, keys.lease(EP)) == 0


def test_a_granted_slot_claims_the_task_and_counts_its_attempt(
    start: Script, redis_client: redis.Redis
) -> None:
    _, _, _, slot = _start(start, offer=True)

    assert slot == [1, 0, 1, 1]
    assert redis_client.zrange(keys.lease(EP), 0, -1) == [b"slot-1"]
    assert redis_client.get(RUNNING) == b"claim-1"
    assert 19_000 < redis_client.pttl(RUNNING) <= 20_000
    record = redis_client.hgetall(RECORD)
    assert (record[b"attempts"], record[b"attempts:default"]) == (b"1", b"1")
    assert abs(float(record[b"first_attempt_at"]) - time.time()) < 60


@pytest.mark.parametrize(
    "record",
    [
        {"endpoint": "fallback"},  # moved to a fallback endpoint
        {"job_id": "job-1"},  # a serverless job to poll
        {"deliveries:0": MAX_DELIVERIES},  # this one is one delivery too many
    ],
)
def test_no_slot_for_a_task_that_will_not_call_its_expected_endpoint(
    start: Script, redis_client: redis.Redis, record: dict[str, Any]
) -> None:
    redis_client.hset(RECORD, mapping=record)
    _, _, _, slot = _start(start, offer=True)
    assert slot is None
    assert redis_client.exists(RUNNING, keys.lease(EP)) == 0
    assert redis_client.get(RESULT) == STARTED.encode()


def test_the_slot_answer_says_why_none_was_granted(
    start: Script, redis_client: redis.Redis
) -> None:
    redis_client.set(RUNNING, "another-worker")
    _, _, _, slot = _start(start, offer=True)
    assert slot == [4, 0]  # claimed by another worker
    assert redis_client.zcard(keys.lease(EP)) == 0

    redis_client.hset(keys.breaker(EP), "open_until", int(time.time() * 1000) + 60_000)
    _, _, _, slot = _start(start, offer=True)
    assert slot[0] == 2 and 50_000 < slot[1] <= 60_000  # the breaker is open


def test_a_spent_rate_limit_grants_no_slot(start: Script, redis_client: redis.Redis) -> None:
    assert _start(start, offer=True, rpm=1)[3][0] == 1
    redis_client.delete(keys.lease(EP))  # the cap is not what refuses the next one
    _, _, _, slot = _start(start, offer=True, rpm=1)
    assert slot[0] == 3 and 0 < slot[1] <= 60_000


def test_the_guards_function_is_included_not_copied() -> None:
    text = lua.source("worker.delivery", "task_start")
    assert "#include" not in text
    assert lua.library("worker.limits", "slot_take") in text
    assert text.count("local function acquire_slot(") == 1


@pytest.mark.parametrize("stored", ["pending", "succeeded"])
def test_with_the_results_apart_the_result_key_is_neither_read_nor_written(
    start: Script, redis_client: redis.Redis, stored: str
) -> None:
    """GENQUEUE_RESULT_REDIS_URL: the caller read the result there; the script takes its word
    (a slot only for a pending task) and leaves this Redis's result key alone."""
    redis_client.set(RESULT, "left alone")
    deliveries, _, meta, slot = _start(start, offer=True, result_apart=stored)
    assert (deliveries, meta) == (1, None)
    assert redis_client.get(RESULT) == b"left alone"
    if stored == "succeeded":
        assert slot is None
        assert redis_client.exists(RUNNING, keys.lease(EP)) == 0
    else:
        assert slot == [1, 0, 1, 1]
        assert redis_client.get(RUNNING) == b"claim-1"
