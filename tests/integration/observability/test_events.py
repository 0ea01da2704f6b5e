"""The completion stream ``genqueue:events``: one entry per final state, read by consumer groups."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
import redis

from tests.integration.observability.conftest import wait_for
from worker import keys
from worker.delivery.task_scripts import Ending, Finished, Lifecycle
from worker.observability.completion_stream import EVENTS_STREAM

pytestmark = pytest.mark.timeout(90)

FIELDS = {b"task_id", b"status", b"error_type", b"finished_at", b"attempts"}


def _consume(url: str, name: str, seen: list[dict], stop: threading.Event) -> None:
    client = redis.Redis.from_url(url)
    while not stop.is_set():
        answer = client.xreadgroup("billing", name, {EVENTS_STREAM: ">"}, count=3, block=100)
        for _, entries in answer or []:
            for entry_id, fields in entries:
                seen.append(fields)
                client.xack(EVENTS_STREAM, "billing", entry_id)
    client.close()


def test_a_consumer_group_reads_every_task_once(
    redis_url, redis_client, simulator, start_worker, celery_client
):
    redis_client.xgroup_create(EVENTS_STREAM, "billing", id="$", mkstream=True)
    seen: list[dict] = []
    stop = threading.Event()
    consumers = [
        threading.Thread(target=_consume, args=(redis_url, f"c{i}", seen, stop), daemon=True)
        for i in range(2)
    ]
    for consumer in consumers:
        consumer.start()
    start_worker(redis_url, simulator.url)
    simulator.script({"status": 400}, {"status": 400})
    prompt = "the prompt never reaches the stream"
    results = [
        celery_client.send_task(
            "genqueue.generate", kwargs={"request": {"prompt": prompt, "params": {"max_tokens": 3}}}
        )
        for _ in range(20)
    ]
    for result in results:
        result.get(timeout=30, propagate=False)
    wait_for(lambda: len(seen) >= 20, 20, "20 events")
    time.sleep(0.5)  # anything extra would show up now
    stop.set()
    for consumer in consumers:
        consumer.join(5)

    read = sorted(fields[b"task_id"].decode() for fields in seen)
    assert read == sorted(result.id for result in results)  # each exactly once
    assert all(set(fields) == FIELDS for fields in seen)  # no prompt, no output
    assert redis_client.xpending(EVENTS_STREAM, "billing")["pending"] == 0
    entries = redis_client.xrange(EVENTS_STREAM)
    statuses = Counter(fields[b"status"] for _, fields in entries)
    assert statuses == {b"succeeded": 18, b"failed": 2}
    failed = [fields for _, fields in entries if fields[b"status"] == b"failed"]
    assert {fields[b"error_type"] for fields in failed} == {b"endpoint_rejected"}
    assert all(fields[b"attempts"] == b"1" for _, fields in entries)
    for _, fields in entries:
        assert prompt.encode() not in b"".join(fields.values())


def _finish(lifecycle: Lifecycle, task_id: str, status: str) -> Finished:
    result = {"text": "t"} if status == "succeeded" else None
    error = "" if status == "succeeded" else status
    ending = Ending(status, result=result, error_type=error, error_message="m")
    return lifecycle.finish(task_id, ending, claim_token=None)


def test_one_entry_per_task_even_when_finished_twice(redis_client):
    lifecycle = Lifecycle(redis_client, record_ttl_s=60, events_maxlen=1000)
    redis_client.hset(keys.task_record("a"), mapping={"attempts": 2, "created_at": "x"})
    assert _finish(lifecycle, "a", "succeeded") == Finished(False, 2, "x")
    assert json.loads(redis_client.get(keys.celery_result("a")))["result"] == {"text": "t"}
    # The same result replayed for a redelivered message: no second entry.
    _finish(lifecycle, "a", "succeeded")
    # Cancelled while it ran: the success is neither stored nor announced; the cancellation is.
    redis_client.hset(keys.task_record("b"), "cancel_requested", "1")
    assert _finish(lifecycle, "b", "succeeded").cancel_requested
    assert redis_client.get(keys.celery_result("b")) is None
    _finish(lifecycle, "b", "cancelled")
    entries = [fields for _, fields in redis_client.xrange(EVENTS_STREAM)]
    assert [(f[b"task_id"], f[b"status"], f[b"attempts"]) for f in entries] == [
        (b"a", b"succeeded", b"2"),
        (b"b", b"cancelled", b"0"),
    ]
    assert redis_client.ttl(keys.task_record("a")) > 0


def test_the_stream_is_capped(redis_client):
    lifecycle = Lifecycle(redis_client, record_ttl_s=60, events_maxlen=100)
    for i in range(1000):
        _finish(lifecycle, f"t{i}", "failed")
    # MAXLEN ~ trims whole nodes: about the cap, never the whole history.
    assert 100 <= redis_client.xlen(EVENTS_STREAM) < 300
