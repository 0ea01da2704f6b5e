"""The guard's admission queue through its Python API, against a real Redis: waiters sleep until
a freed slot is handed to them, in priority and fair-share order (docs/scheduling.md)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from worker import keys
from worker.limits.guard import Claim, EndpointGuard, GuardPolicy

pytestmark = pytest.mark.timeout(60)

WEIGHTS = {"a": 3.0, "b": 1.0}


@pytest.fixture
def guard(redis_client: redis.Redis) -> Iterator[EndpointGuard]:
    guard = EndpointGuard(
        redis_client,
        "ep",
        GuardPolicy(limit=1, oldest_every=0),
        weights=lambda tenant: WEIGHTS.get(tenant, 1.0),
    )
    yield guard
    guard.close()


def _wait_until(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _waiters(
    guard: EndpointGuard, tasks: list[tuple[str, str, int]], order: list[str]
) -> list[threading.Thread]:
    """One thread per task (name, tenant, priority): waits for a slot, notes its name, leaves."""

    def run(name: str, tenant: str, priority: int) -> None:
        claim = Claim(name, f"claim-{name}", 20_000, "ep", priority=priority, tenant=tenant)
        with guard.slot(claim):
            order.append(name)

    threads = [threading.Thread(target=run, args=task, daemon=True) for task in tasks]
    for thread in threads:
        thread.start()
    return threads


def test_waiters_get_the_slot_by_priority_then_by_weight(
    redis_client: redis.Redis, guard: EndpointGuard
) -> None:
    order: list[str] = []
    tasks = [(f"a-{n}", "a", 2) for n in range(20)] + [(f"b-{n}", "b", 2) for n in range(20)]
    with guard.slot(Claim("first", "claim-first", 20_000, "ep")):
        threads = _waiters(guard, tasks, order)
        _wait_until(lambda: redis_client.zcard(keys.admission("ep")) == 40)
        threads += _waiters(guard, [("urgent", "b", 9)], order)
        _wait_until(lambda: redis_client.zcard(keys.admission("ep")) == 41)
    for thread in threads:
        thread.join(30)
    assert len(order) == 41
    assert order[0] == "urgent"
    # The first 16 calls of the backlog: 3:1 by weight.
    assert Counter(name[0] for name in order[1:17]) == {"a": 12, "b": 4}
    assert redis_client.zcard(keys.lease("ep")) == 0
    assert redis_client.zcard(keys.admission("ep")) == 0
