"""A task cancelled while a worker holds it waiting for a slot never takes one: the slot goes to
the next waiter, and the endpoint never sees the cancelled task (real worker, the simulator)."""

from __future__ import annotations

import time

import pytest

from tests.integration.scheduling.test_scheduling import send
from worker import keys
from worker.delivery import records

pytestmark = pytest.mark.timeout(90)


def test_a_task_cancelled_while_it_waits_never_takes_a_slot(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    simulator.configure(latency_s=1.0)
    start_worker(redis_url, simulator.url, RUNPOD_MAX_CONCURRENCY=1)
    running = send(celery_client, redis_client, 5, "running")
    deadline = time.monotonic() + 30
    while simulator.stats()["in_flight"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    cancelled = send(celery_client, redis_client, 5, "cancelled")
    after = send(celery_client, redis_client, 5, "after")
    time.sleep(0.5)  # both wait in the admission queue, held by the worker
    redis_client.hset(keys.task_record(cancelled.id), records.F_CANCEL, "1")  # as DELETE does
    assert after.get(timeout=60)["text"]
    assert running.get(timeout=60)["text"]
    assert simulator.stats()["calls"] == 2
    record = redis_client.hgetall(keys.task_record(cancelled.id))
    assert b"first_attempt_at" not in record and b"attempts" not in record
    deadline = time.monotonic() + 10
    while redis_client.hget(keys.task_record(cancelled.id), records.F_FINISHED) is None:
        assert time.monotonic() < deadline, "the cancelled task never ended"
        time.sleep(0.1)
