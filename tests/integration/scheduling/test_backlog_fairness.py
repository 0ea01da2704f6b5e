"""Fair over everything queued: a tenant sent behind another's long backlog in Redis gets its
share at once (docs/scheduling.md), with real worker processes, a plain Celery client and the
simulator as the bottleneck."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from celery import Celery

from tests.integration.scheduling.test_scheduling import finish_order
from worker import keys

pytestmark = pytest.mark.timeout(180)

#: Far more than the worker's window (50): most of it waits in Redis.
BACKLOG = 1500
BURST = 10


def send_many(client: Celery, requests: list[dict[str, Any]], priority: int = 4) -> list[Any]:
    """Plain Celery ``send_task`` calls, as a service with only Celery installed sends them."""
    with client.producer_or_acquire() as producer:
        return [
            client.send_task(
                "genqueue.generate",
                kwargs={"request": request},
                priority=priority,
                producer=producer,
            )
            for request in requests
        ]


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def requests_of(tenant: str | None, count: int) -> list[dict[str, Any]]:
    named = {"tenant": tenant} if tenant else {}
    return [{"prompt": f"{tenant} {n}", "params": {"max_tokens": 4}, **named} for n in range(count)]


@pytest.mark.parametrize("weight", [1, 3])
def test_a_tenant_sent_behind_a_long_backlog_gets_its_share_at_once(
    tmp_path, redis_url, redis_client, simulator, start_worker, celery_client, weight
) -> None:
    tenants_file = tmp_path / "tenants.toml"
    tenants_file.write_text(f"[tenants.small]\nkey_hashes = []\nweight = {weight}\n")
    simulator.configure(latency_s=0.1)
    start_worker(
        redis_url, simulator.url, RUNPOD_MAX_CONCURRENCY=1, GENQUEUE_WORKER_CONCURRENCY=50,
        GENQUEUE_TENANTS_FILE=str(tenants_file),
    )  # fmt: skip
    # The backlog names no tenant (plain Celery: the internal tenant); the burst names its own.
    send_many(celery_client, requests_of(None, BACKLOG))
    wait_for(lambda: len(finish_order(redis_client)) >= 10, 60, "the backlog's first calls")
    before = len(finish_order(redis_client))
    burst = send_many(celery_client, requests_of("small", BURST))
    for result in burst:
        result.get(timeout=90)

    after = finish_order(redis_client)[before:]
    ids = {result.id for result in burst}
    places = [index for index, task in enumerate(after) if task in ids]
    assert len(places) == BURST
    # Its first call comes within about a second of calls (10 a second here), not after the
    # 1,400 tasks sent before it.
    assert places[0] <= 12, places
    # Then it gets its share while it has work: 1 in 2 calls at weight 1. At weight 3 as
    # much: its tasks reach the full window one per ended call, each fetched while the slot
    # that call freed goes to a task already held, so it gets about 1 in 2 (3 in 4 once its
    # tasks are held: tests/integration/limits/test_admission_lua.py).
    calls = places[-1] - places[0] + 1
    share = BURST / calls
    assert share >= 0.5 - 0.1, (share, places)


def test_the_backlog_state_is_gone_once_it_drains(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    simulator.configure(latency_s=0.0)
    start_worker(redis_url, simulator.url, GENQUEUE_WORKER_CONCURRENCY=20)
    results = send_many(celery_client, requests_of("a", 300) + requests_of("b", 100))
    for result in results:
        result.get(timeout=60)
    left = [
        key
        for pattern in ("genqueue:backlog*",)
        for key in redis_client.scan_iter(match=pattern, count=1000)
    ]
    assert left == []
    assert redis_client.hlen(keys.backlog_size()) == 0


def test_priority_still_comes_first_over_a_sorted_backlog(
    redis_url, redis_client: redis.Redis, simulator, start_worker, celery_client
) -> None:
    simulator.configure(latency_s=0.1)
    start_worker(redis_url, simulator.url, RUNPOD_MAX_CONCURRENCY=1, GENQUEUE_WORKER_CONCURRENCY=20)
    send_many(celery_client, requests_of("batch", 400), priority=7)  # genqueue priority 2
    wait_for(lambda: redis_client.hlen(keys.backlog_size()) > 0, 30, "a sorted backlog")
    before = len(finish_order(redis_client))
    urgent = send_many(celery_client, requests_of("other", 3), priority=0)  # priority 9
    for result in urgent:
        result.get(timeout=60)
    after = finish_order(redis_client)[before:]
    places = sorted(after.index(result.id) for result in urgent)
    assert places[-1] <= 8, places
