"""A dead worker idles nothing, and a stalled one never lets the cap be exceeded: a process's
open presence connection tells the two apart (worker/limits/presence.py)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from tests.integration.reliability.conftest import send, wait_for
from worker import keys

pytestmark = pytest.mark.timeout(180)


def test_a_killed_workers_slot_and_places_go_to_the_next_waiter_at_once(
    redis_url, simulator, start_worker, celery_client
) -> None:
    simulator.configure(latency_s=60.0)  # the doomed worker's call would hold the slot long
    settings = {
        "RUNPOD_MAX_CONCURRENCY": 1,
        "GENQUEUE_VISIBILITY_TIMEOUT_S": 5,
        "GENQUEUE_HEARTBEAT_INTERVAL_S": 1,
    }
    doomed = start_worker(redis_url, simulator.url, GENQUEUE_WORKER_CONCURRENCY=4, **settings)
    held = [send(celery_client, f"doomed {n}") for n in range(4)]
    wait_for(lambda: simulator.stats()["in_flight"] == 1, 30, "the doomed worker's call")
    survivor = start_worker(redis_url, simulator.url, **settings)
    survivor.wait_ready()
    time.sleep(1.0)  # the doomed worker's window is full: the next task is the survivor's
    waiting = send(celery_client, "next")
    time.sleep(1.0)  # it waits behind the doomed worker's call and its three waiters
    simulator.configure(latency_s=0.0)
    doomed.kill()
    killed_at = time.monotonic()
    assert waiting.get(timeout=60)["text"]
    # The slot and the places of the dead process were freed when its connection closed, not
    # when their leases lapsed (30 s): the survivor's task went next.
    waited_s = time.monotonic() - killed_at
    print(f"the next task finished {waited_s:.2f} s after the kill")
    assert waited_s < 3, waited_s
    for result in held:  # and the dead worker's tasks came back and ran
        assert result.get(timeout=60)["text"]


def test_a_stalled_worker_keeps_its_slots_longer_than_a_lease(
    redis_url, simulator, start_worker, celery_client
) -> None:
    # A 6 s lease (GENQUEUE_SLOT_LEASE_TTL_S): the stall and the calls outlast two of them.
    simulator.configure(latency_s=14.0)
    settings = {
        "RUNPOD_MAX_CONCURRENCY": 2,
        "GENQUEUE_VISIBILITY_TIMEOUT_S": 120,
        "GENQUEUE_SLOT_LEASE_TTL_S": 6,
    }
    stalled = start_worker(redis_url, simulator.url, GENQUEUE_WORKER_CONCURRENCY=2, **settings)
    first = [send(celery_client, f"first {n}") for n in range(2)]
    wait_for(lambda: simulator.stats()["in_flight"] == 2, 30, "two calls")
    client = redis.Redis.from_url(redis_url)
    seconds, micros = client.time()
    expiries_ms = [
        score for _, score in client.zrange(keys.lease("default"), 0, -1, withscores=True)
    ]
    assert len(expiries_ms) == 2
    assert max(expiries_ms) - (seconds * 1000 + micros / 1000) <= 6_000  # the lease TTL in force
    client.close()
    other = start_worker(redis_url, simulator.url, **settings)
    other.wait_ready()
    later = [send(celery_client, f"later {n}") for n in range(2)]
    time.sleep(1.0)
    os.killpg(stalled.process.pid, signal.SIGSTOP)  # the supervisor and its worker
    try:
        time.sleep(15)  # its leases' TTL passes twice; its calls end at the endpoint meanwhile
        assert simulator.stats()["max_in_flight"] == 2
        simulator.configure(latency_s=0.0)
    finally:
        os.killpg(stalled.process.pid, signal.SIGCONT)
    for result in first + later:
        assert result.get(timeout=60)["text"]
    assert simulator.stats()["max_in_flight"] == 2
