"""worker.delivery.task_scripts against a real Redis: the start script's slot in passing, and the
end
script that releases the slot, the running claim and the message's unacked entries."""

from __future__ import annotations

import json

import pytest
import redis

from worker import keys
from worker.delivery.task_scripts import BrokerAcks, Ending, Lifecycle, celery_meta
from worker.limits.guard import Claim, EndpointGuard, GuardPolicy

MAX_DELIVERIES = 3
TAG = "tag-1"


@pytest.fixture
def guard(redis_client):
    guard = EndpointGuard(redis_client, "ep", GuardPolicy(limit=1))
    yield guard
    guard.close()


@pytest.fixture
def settled():
    return []


@pytest.fixture
def lifecycle(redis_client, settled):
    acks = BrokerAcks("unacked", "unacked_index", settled.append)
    return Lifecycle(redis_client, record_ttl_s=60, events_maxlen=100, broker=acks)


def _begin(lifecycle, guard, task_id="t1"):
    offer = guard.offer(Claim(task_id, f"claim-{task_id}", 20_000, "default"))
    assert offer is not None
    progress = lifecycle.begin(task_id, 0, "host", offer, MAX_DELIVERIES)
    if progress.granted is None:
        guard.withdraw(offer)
    return progress


def test_a_ready_task_gets_its_slot_claim_and_attempt_in_the_start_script(
    redis_client, lifecycle, guard
):
    progress = _begin(lifecycle, guard)
    assert progress.granted is not None
    assert (progress.granted.attempt, progress.granted.attempt_on_endpoint) == (1, 1)
    assert progress.attempts == 0  # what the record said before this attempt
    assert redis_client.zcard(keys.lease("ep")) == 1
    assert redis_client.get(keys.running("t1")) == b"claim-t1"
    assert json.loads(redis_client.get(keys.celery_result("t1")))["status"] == "STARTED"
    # The shared cap (1) is taken: neither this process's start script nor another worker's
    # gets a slot, and neither counts an attempt.
    assert _begin(lifecycle, guard, "t2").granted is None
    elsewhere = EndpointGuard(redis_client, "ep", GuardPolicy(limit=1))
    try:
        assert _begin(lifecycle, elsewhere, "t2").granted is None
    finally:
        elsewhere.close()
    assert redis_client.hget(keys.task_record("t2"), "attempts") is None


@pytest.mark.parametrize(
    "record",
    [
        {"cancel_requested": "1"},
        {"endpoint": "fallback"},
        {"job_id": "job-1"},
        {"deliveries:0": str(MAX_DELIVERIES)},  # this delivery is one too many
    ],
)
def test_no_slot_in_passing_for_a_task_that_will_not_call(redis_client, lifecycle, guard, record):
    redis_client.hset(keys.task_record("t1"), mapping=record)
    assert _begin(lifecycle, guard).granted is None
    assert redis_client.zcard(keys.lease("ep")) == 0
    assert redis_client.exists(keys.running("t1")) == 0
    assert redis_client.hget(keys.task_record("t1"), "attempts") is None


def test_no_slot_in_passing_for_a_task_with_a_stored_result(redis_client, lifecycle, guard):
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    result = {"text": "x", "finish_reason": "stop", "model": "m", "usage": usage, "latency_ms": 1}
    meta = {"status": "SUCCESS", "result": result, "task_id": "t1"}
    redis_client.set(keys.celery_result("t1"), json.dumps(meta))
    assert _begin(lifecycle, guard).granted is None
    assert redis_client.zcard(keys.lease("ep")) == 0


def test_the_end_script_releases_slot_claim_and_message(redis_client, lifecycle, guard, settled):
    redis_client.zadd("unacked_index", {TAG: 1.0})
    redis_client.hset("unacked", TAG, "message")
    redis_client.zadd(keys.inbox(), {"t1": 1.0, "t2": 1.0})
    granted = _begin(lifecycle, guard).granted
    with guard.slot(Claim("t1", "claim-t1", 20_000, "default"), granted) as slot:
        release = guard.hand_off(slot)
    assert redis_client.zcard(keys.lease("ep")) == 1  # held until the end script
    end = lifecycle.finish(
        "t1", Ending("succeeded", result={"text": "x"}), "claim-t1", release, TAG
    )
    assert not end.cancel_requested
    assert redis_client.zcard(keys.lease("ep")) == 0
    assert redis_client.exists(keys.running("t1")) == 0
    assert redis_client.zcard("unacked_index") == 0 and redis_client.hlen("unacked") == 0
    assert settled == [TAG]
    assert redis_client.zrange(keys.inbox(), 0, -1) == [b"t2"]  # the sweep looks at t2 only
    assert json.loads(redis_client.get(keys.celery_result("t1")))["result"] == {"text": "x"}


def test_a_success_cancelled_meanwhile_keeps_its_message_until_the_cancelled_end(
    redis_client, lifecycle, settled
):
    redis_client.hset("unacked", TAG, "message")
    redis_client.zadd(keys.inbox(), {"t1": 1.0})
    redis_client.hset(keys.task_record("t1"), "cancel_requested", "1")
    end = lifecycle.finish("t1", Ending("succeeded", result={"text": "x"}), None, None, TAG)
    assert end.cancel_requested
    assert redis_client.hlen("unacked") == 1 and settled == []
    assert redis_client.zcard(keys.inbox()) == 1
    lifecycle.finish("t1", Ending("cancelled", error_type="cancelled"), None, None, TAG)
    assert redis_client.hlen("unacked") == 0 and settled == [TAG]
    assert redis_client.zcard(keys.inbox()) == 0


@pytest.fixture
def results_client(other_redis_url):
    """Another database as the results' Redis (GENQUEUE_RESULT_REDIS_URL)."""
    client = redis.Redis.from_url(other_redis_url)
    yield client
    client.close()


@pytest.fixture
def apart(redis_client, results_client, settled):
    acks = BrokerAcks("unacked", "unacked_index", settled.append)
    return Lifecycle(
        redis_client, record_ttl_s=60, events_maxlen=100, broker=acks, results=results_client
    )


RESULT = {
    "text": "hi",
    "finish_reason": "stop",
    "model": "m",
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    "latency_ms": 5,
}


def test_with_the_results_apart_start_and_end_write_them_there_only(
    redis_client, results_client, apart, guard, settled
):
    progress = _begin(apart, guard)
    assert progress.granted is not None and progress.stored_result is None
    result_key = keys.celery_result("t1")
    assert json.loads(results_client.get(result_key))["status"] == "STARTED"

    end = apart.finish("t1", Ending("succeeded", result=RESULT), "claim-t1", message_tag=TAG)

    assert end.cancel_requested is False
    stored = json.loads(results_client.get(result_key))
    assert (stored["status"], stored["result"]) == ("SUCCESS", RESULT)
    assert 50 <= results_client.ttl(result_key) <= 60
    assert redis_client.exists(result_key) == 0
    assert redis_client.hget(keys.task_record("t1"), "finished_at") is not None
    assert settled == [TAG]


def test_with_the_results_apart_a_stored_success_is_found_and_takes_no_slot(
    redis_client, results_client, apart, guard
):
    success = celery_meta("t1", "SUCCESS", RESULT, done=True)
    results_client.set(keys.celery_result("t1"), success)

    progress = _begin(apart, guard)

    assert progress.granted is None
    assert progress.stored_result is not None and progress.stored_result.text == "hi"
    assert results_client.get(keys.celery_result("t1")) == success.encode()  # no STARTED over it
    assert redis_client.zcard(keys.lease("ep")) == 0


def test_with_the_results_apart_a_cancel_after_the_success_is_stored_loses(
    redis_client, results_client, apart, guard, settled
):
    """The success is written to the results' Redis first; a cancellation that arrives before
    the end script comes too late, and the task ends succeeded, acknowledged, not cancelled."""
    _begin(apart, guard)
    redis_client.hset(keys.task_record("t1"), "cancel_requested", "1")

    end = apart.finish("t1", Ending("succeeded", result=RESULT), "claim-t1", message_tag=TAG)

    assert end.cancel_requested is False
    assert json.loads(results_client.get(keys.celery_result("t1")))["status"] == "SUCCESS"
    assert settled == [TAG]
