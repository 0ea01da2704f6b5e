"""Who gets the endpoint next, end to end: real worker processes, a plain Celery client, the
simulator as the bottleneck (docs/scheduling.md)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis
from celery import Celery

from worker import keys
from worker.delivery import records

pytestmark = pytest.mark.timeout(120)

BATCH = 40


def send(client: Celery, redis_client: redis.Redis, priority: int, text: str) -> Any:
    """As genqueue's producers send a task: its record first (when it was created), then its
    message at Celery priority 9 - priority (the Redis lists serve 0 first)."""
    task_id = str(uuid.uuid4())
    redis_client.hset(keys.task_record(task_id), "created_at", records.utcnow_iso())
    time.sleep(0.002)  # each task created in a millisecond of its own
    request = {"prompt": text, "priority": priority, "params": {"max_tokens": 4}}
    return client.send_task(
        "genqueue.generate", kwargs={"request": request}, priority=9 - priority, task_id=task_id
    )


def finish_order(client: redis.Redis) -> list[str]:
    entries = client.xrange(keys.EVENTS_STREAM)
    return [fields[b"task_id"].decode() for _, fields in entries]


@pytest.mark.parametrize("workers", [1, 2])
def test_an_urgent_task_overtakes_a_batch_the_workers_already_hold(
    redis_url, redis_client, simulator, start_worker, celery_client, workers
) -> None:
    simulator.configure(latency_s=0.15)
    for _ in range(workers):
        start_worker(
            redis_url, simulator.url, RUNPOD_MAX_CONCURRENCY=1, GENQUEUE_WORKER_CONCURRENCY=50
        )
    batch = [send(celery_client, redis_client, 2, f"batch {n}") for n in range(BATCH)]
    time.sleep(0.5)  # the workers hold the whole batch, waiting for the one slot
    urgent = send(celery_client, redis_client, 9, "urgent")
    urgent.get(timeout=60)
    for result in batch:
        result.get(timeout=60)

    order = finish_order(redis_client)
    assert len(order) == BATCH + 1
    # One call was running when it came, and at most one slot in ten goes to the oldest wait.
    assert order.index(urgent.id) <= 5, order.index(urgent.id)
    # The batch itself went oldest first, once the idle endpoint's first slot was taken (in
    # passing, by whichever of the tasks fetched together started first).
    batch_ids = [r.id for r in batch]
    batch_order = [task for task in order if task != urgent.id]
    first = batch_order[0]
    assert batch_order[1:] == [t for t in batch_ids if t != first]


def test_two_tenants_share_a_busy_endpoint_by_weight(
    tmp_path, redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    # Weights from the tenants file; the tasks name their tenant, as a Celery producer may.
    tenants_file = tmp_path / "tenants.toml"
    tenants_file.write_text(
        "[tenants.big]\nkey_hashes = []\nweight = 3\n\n"
        "[tenants.small]\nkey_hashes = []\nweight = 1\n"
    )
    simulator.configure(latency_s=0.05)
    start_worker(
        redis_url, simulator.url, RUNPOD_MAX_CONCURRENCY=1, GENQUEUE_WORKER_CONCURRENCY=100,
        GENQUEUE_TENANTS_FILE=str(tenants_file),
    )  # fmt: skip
    tenant_of: dict[str, str] = {}
    results = []
    # The small tenant's backlog is sent first: order must not decide the shares.
    for tenant in ("small", "big"):
        for n in range(40):
            task_id = str(uuid.uuid4())
            redis_client.hset(keys.task_record(task_id), "created_at", records.utcnow_iso())
            request = {"prompt": f"{tenant} {n}", "tenant": tenant, "params": {"max_tokens": 4}}
            results.append(
                celery_client.send_task(
                    "genqueue.generate", kwargs={"request": request}, task_id=task_id
                )
            )
            tenant_of[task_id] = tenant
    for result in results:
        result.get(timeout=90)
    order = [tenant_of[task] for task in finish_order(redis_client)]
    assert len(order) == 80
    # While both have work waiting (the first 40 calls, after the one taken in passing),
    # calls go 3:1 within 10 %.
    window = order[2:42]
    assert 27 <= window.count("big") <= 33, window
