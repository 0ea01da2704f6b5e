"""A worker that dies loses nothing, and no task runs twice while its first run is alive."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.integration.reliability.conftest import send, wait_for
from worker import keys

pytestmark = pytest.mark.timeout(150)

FAST_REDELIVERY = {"GENQUEUE_VISIBILITY_TIMEOUT_S": 5, "GENQUEUE_HEARTBEAT_INTERVAL_S": 1}


def test_sigkill_mid_call_with_default_settings(
    redis_url, simulator, start_worker, celery_client
) -> None:
    """Tasks of a SIGKILLed worker complete on another within 60 s, one extra call each."""
    simulator.configure(latency_s=8.0)
    survivor = start_worker(redis_url, simulator.url)
    doomed = start_worker(redis_url, simulator.url)
    results = [send(celery_client, f"task {i}") for i in range(10)]
    wait_for(lambda: simulator.stats()["in_flight"] == 10, 20, "10 calls in flight")
    killed_at = time.monotonic()
    doomed.kill()
    values = [r.get(timeout=60) for r in results]
    recovered_s = time.monotonic() - killed_at
    assert all(v["text"] for v in values)
    assert recovered_s < 60, recovered_s
    # Each task whose worker died was called at most once more, and it did hold some.
    assert 10 < simulator.stats()["calls"] <= 20
    assert "succeeded" in survivor.log()


def test_sigterm_finishes_what_is_in_flight(
    redis_url, simulator, start_worker, celery_client
) -> None:
    simulator.configure(latency_s=2.0)
    worker = start_worker(redis_url, simulator.url)
    results = [send(celery_client, f"task {i}") for i in range(5)]
    wait_for(lambda: simulator.stats()["in_flight"] == 5, 20, "5 calls in flight")
    worker.process.terminate()
    assert worker.process.wait(30) == 0
    assert [r.get(timeout=5)["usage"]["completion_tokens"] for r in results] == [16] * 5
    assert simulator.stats()["calls"] == 5


def test_no_second_run_while_the_first_is_alive(
    redis_url, simulator, start_worker, celery_client
) -> None:
    """Calls outlast the visibility timeout; the heartbeat keeps them with their worker."""
    simulator.configure(latency_s=9.0)
    start_worker(redis_url, simulator.url, **FAST_REDELIVERY)
    start_worker(redis_url, simulator.url, **FAST_REDELIVERY)
    results = [send(celery_client, f"slow {i}") for i in range(6)]
    assert all(r.get(timeout=60)["text"] for r in results)
    assert simulator.stats()["calls"] == 6


def test_a_stored_result_is_not_generated_again(
    redis_url, simulator, start_worker, celery_client
) -> None:
    start_worker(redis_url, simulator.url)
    first = send(celery_client, "once")
    value = first.get(timeout=30)
    # The same message delivered again (same task id): the stored result stands.
    again = celery_client.send_task(
        "genqueue.generate", kwargs={"request": {"prompt": "once"}}, task_id=first.id
    )
    assert again.get(timeout=30) == value
    assert simulator.stats()["calls"] == 1


def test_poison_task_is_dead_lettered_then_requeued(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    """A task whose worker dies on every delivery fails after max_deliveries, dead-lettered."""
    settings = {**FAST_REDELIVERY, "GENQUEUE_MAX_DELIVERIES": 2}
    simulator.script("hang", "hang")
    result = send(celery_client, "poison")
    for call in (1, 2):
        worker = start_worker(redis_url, simulator.url, **settings)
        wait_for(lambda n=call: simulator.stats()["calls"] == n, 30, f"delivery {call}")
        worker.kill()
    start_worker(redis_url, simulator.url, **settings)
    with pytest.raises(Exception) as failure:
        result.get(timeout=40)
    assert "delivered 3 times" in str(failure.value)
    assert simulator.stats()["calls"] == 2
    record = redis_client.hgetall(f"genqueue:task:{result.id}")
    assert json.loads(record[b"error"])["type"] == "poison"

    env = {"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}
    listed = subprocess.run(
        [sys.executable, "-m", "genqueue", "dead", "list"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    entries = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [e["task_id"] for e in entries] == [result.id]
    assert entries[0]["request"]["prompt"] == "poison"
    requeued = subprocess.run(
        [sys.executable, "-m", "genqueue", "dead", "requeue", result.id],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert requeued.returncode == 0, requeued.stderr
    assert celery_client.AsyncResult(result.id).get(timeout=30)["text"]
    assert redis_client.llen("genqueue:dead") == 0


def test_a_worker_killed_while_its_task_waits_for_a_slot_makes_it_no_poison(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    """Deliveries whose worker died while the task only waited in the admission queue are
    forgiven: killed three times there with GENQUEUE_MAX_DELIVERIES=2, it still runs."""
    settings = {**FAST_REDELIVERY, "RUNPOD_MAX_CONCURRENCY": 1, "GENQUEUE_MAX_DELIVERIES": 2}
    simulator.configure(latency_s=60.0)
    keeper = start_worker(redis_url, simulator.url, GENQUEUE_WORKER_CONCURRENCY=1, **settings)
    blocker = send(celery_client, "holds the only slot")
    wait_for(lambda: simulator.stats()["in_flight"] == 1, 30, "the keeper's call")
    waiter = start_worker(redis_url, simulator.url, GENQUEUE_WORKER_CONCURRENCY=1, **settings)
    waiter.wait_ready()
    time.sleep(1.0)  # the keeper's window is full: the next task is the waiter's
    waiting = send(celery_client, "waits")
    record = f"genqueue:task:{waiting.id}"
    seen: set[bytes | None] = {None}  # the waiting deliveries, by their slot token

    def waits_anew() -> bool:
        token = redis_client.hget(record, "forgiven:deliveries:0")
        queue = redis_client.zrange(keys.admission("default"), 0, -1)
        return token not in seen and any(m.endswith(token) for m in queue)

    for kill in (1, 2, 3):
        wait_for(waits_anew, 30, f"delivery {kill} to wait for the slot")
        seen.add(redis_client.hget(record, "forgiven:deliveries:0"))
        # This delivery is counted, then forgiven while it waits (before: ``kill`` of them).
        assert int(redis_client.hget(record, "deliveries:0") or 0) == 0
        waiter.kill()
        waiter = start_worker(redis_url, simulator.url, GENQUEUE_WORKER_CONCURRENCY=1, **settings)
    simulator.configure(latency_s=0.0)
    keeper.kill()  # its slot is freed at once; the blocker comes back elsewhere
    assert waiting.get(timeout=60)["text"]
    assert blocker.get(timeout=60)["text"]
    assert int(redis_client.hget(record, "deliveries:0")) == 1  # only the one that called
    assert redis_client.hget(record, "error") is None


def test_concurrency_cap_across_three_workers(
    redis_url, simulator, start_worker, celery_client
) -> None:
    simulator.configure(latency_s=0.2)
    for _ in range(3):
        start_worker(redis_url, simulator.url, RUNPOD_MAX_CONCURRENCY=2)
    results = [send(celery_client, f"n{i}") for i in range(30)]
    assert all(r.get(timeout=60)["text"] for r in results)
    assert simulator.stats()["max_in_flight"] == 2
    assert simulator.stats()["calls"] == 30


def test_a_killed_worker_does_not_leak_its_slot(
    redis_url, simulator, start_worker, celery_client
) -> None:
    simulator.configure(latency_s=5.0)
    doomed = start_worker(redis_url, simulator.url, RUNPOD_MAX_CONCURRENCY=1, **FAST_REDELIVERY)
    stuck = send(celery_client, "held")
    wait_for(lambda: simulator.stats()["in_flight"] == 1, 20, "the call")
    doomed.kill()
    simulator.configure(latency_s=0.0)
    start_worker(redis_url, simulator.url, RUNPOD_MAX_CONCURRENCY=1, **FAST_REDELIVERY)
    # The dead worker's lease lapses (30 s at most), then both tasks run.
    assert send(celery_client, "next").get(timeout=60)["text"]
    assert stuck.get(timeout=60)["text"]


def test_a_worker_killed_mid_sweep_stops_the_sweeps_for_seconds_not_minutes(
    redis_url, redis_client, simulator, start_worker
) -> None:
    """The dead workers' sweep runs under a lock only its holder releases. A worker killed
    while it sweeps leaves the lock behind; the other workers sweep again once it expires, a
    third of the visibility timeout later (10 s by default; kombu's own expiry is 300 s)."""
    stale = time.time() - 3600
    pipe = redis_client.pipeline(transaction=False)
    for i in range(30_000):
        # A dead worker's messages, routed to a queue nobody consumes: a long sweep.
        message = {"body": "", "headers": {}, "properties": {"delivery_info": {}}}
        pipe.hset("unacked", f"tag-{i}", json.dumps([message, "", "genqueue-test-sink"]))
        pipe.zadd("unacked_index", {f"tag-{i}": stale})
    pipe.execute()
    doomed = start_worker(redis_url, simulator.url)
    wait_for(lambda: redis_client.exists("unacked_mutex"), 30, "a sweep under way")
    doomed.kill()
    left = redis_client.hlen("unacked")
    assert left > 0, "the sweep ended before the kill: make it longer"
    assert 0 < redis_client.pttl("unacked_mutex") <= 10_000
    start_worker(redis_url, simulator.url)
    wait_for(lambda: redis_client.hlen("unacked") == 0, 90, "the survivor's sweep")
    assert redis_client.llen("genqueue-test-sink") == 30_000


def test_a_killed_workers_messages_come_back_without_waiting_for_the_visibility_timeout(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    """With a visibility timeout of ten minutes, a SIGKILLed worker's tasks still run on
    another within a minute: its messages go back once its presence connection is gone."""
    simulator.configure(latency_s=15.0)  # still calling after the first heartbeat (5 s)
    slow = {"GENQUEUE_VISIBILITY_TIMEOUT_S": 600}
    doomed = start_worker(redis_url, simulator.url, **slow)
    results = [send(celery_client, f"task {i}") for i in range(5)]
    wait_for(lambda: simulator.stats()["in_flight"] == 5, 20, "5 calls in flight")
    wait_for(lambda: redis_client.zcard(keys.message_holders()) == 1, 15, "its held messages")
    doomed.kill()
    simulator.configure(latency_s=0.5)
    start_worker(redis_url, simulator.url, **slow)
    assert [r.get(timeout=60)["usage"]["completion_tokens"] for r in results] == [16] * 5
    assert simulator.stats()["calls"] == 10
    assert redis_client.zcard(keys.message_holders()) == 0
