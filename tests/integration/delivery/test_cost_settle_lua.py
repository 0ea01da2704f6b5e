"""Fair by tokens, settled at the end (worker/delivery/scripts/task_end.lua with the settling
arguments of worker.limits.cost, against a real Redis): a task's end moves its tenant's clocks
by (actual - estimate) / weight in the admission queue and in its list's backlog, once, and only
where the tenant still has a clock."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.commands.core import Script

from tests.integration.delivery.test_backlog_lua import _of
from worker import keys, lua
from worker.delivery import backlog, broker
from worker.limits.cost import settle_args

TASK, EP, TENANT, DAY = "t1", "ep", "acme", "2026-01-01"
LIST = keys.queue_list("genqueue.ep", 4)
INFO = keys.admission_info(EP)
ESTIMATE, BAND, WEIGHT = 4100, 4, 2.0


@pytest.fixture
def end(redis_client: redis.Redis) -> Script:
    return lua.register(redis_client, "worker.delivery", "task_end")


def _end(
    script: Script, prompt_tokens: int, completion_tokens: int, settle: bool = True
) -> list[Any]:
    script_keys = [
        keys.task_record(TASK), "genqueue:events", keys.celery_result(TASK), keys.running(TASK),
        broker.UNACKED_INDEX_KEY, broker.UNACKED_KEY, keys.inbox(), keys.usage(TENANT, DAY),
        keys.usage_tenants(DAY), keys.usage_totals(), keys.reserved_tokens(TENANT),
        keys.lease(EP), keys.breaker(EP), keys.breaker_probe(EP), keys.rate(EP),
        keys.admission(EP), keys.admission_by_age(EP), INFO, keys.admission_age(EP),
    ]  # fmt: skip
    args: list[Any] = [
        600, 100, TASK, "succeeded", "", "2026-01-01T00:00:01", "", 300, '{"status":"SUCCESS"}',
        "", "", "", TENANT, EP, prompt_tokens, completion_tokens, 10, 3600,
        "slot-1", "ok", 5, "1000:5000", prompt_tokens + completion_tokens, 1, 0, "", "",
    ]  # fmt: skip
    # As worker.limits.guard.EndpointGuard.hand_off and worker.delivery.task_scripts add them.
    if settle:
        args += [*settle_args(ESTIMATE, BAND, WEIGHT), LIST]
    return script(keys=script_keys, args=args)


def _clocks(client: redis.Redis) -> tuple[float | None, float | None]:
    field = client.hget(INFO, f"F:{BAND}:{TENANT}")
    return (float(field) if field else None), client.zscore(keys.backlog_tenants(LIST), TENANT)


@pytest.fixture
def queued(redis_client: redis.Redis) -> None:
    """acme and other both have tasks waiting: clocks in the admission queue and the backlog."""
    redis_client.hset(INFO, mapping={f"F:{BAND}:{TENANT}": "9000.000000", f"F:{BAND}:other": "1"})
    for tenant, score in ((TENANT, 5000.0), ("other", 4500.0)):
        redis_client.zadd(keys.backlog_tenants(LIST), {tenant: score})
        redis_client.lpush(keys.backlog(LIST, tenant), _of(tenant, f"{tenant}-next"))
    redis_client.hset(keys.backlog_size(), LIST, 2)


@pytest.mark.usefixtures("queued")
def test_the_end_moves_the_tenants_clocks_by_what_it_really_used(
    end: Script, redis_client: redis.Redis
) -> None:
    _end(end, prompt_tokens=300, completion_tokens=50)  # 350 used of 4,100 estimated
    moved = (350 - ESTIMATE) / WEIGHT
    assert _clocks(redis_client) == (pytest.approx(9000 + moved), pytest.approx(5000 + moved))
    # The order follows: acme, behind other before (5,000 against 4,500), is next now.
    fetch = lua.register(redis_client, "worker.delivery", "fetch")
    reply = fetch(
        keys=[broker.UNACKED_KEY, broker.UNACKED_INDEX_KEY, keys.unreadable(), LIST],
        args=[1, 1.0, broker.UNREADABLE_MAX, backlog.DEFAULT_TENANT, "", "genqueue.ep", 512],
    )
    assert reply[2] == f"{TENANT}-next".encode()
    # Once: a redelivered or replayed end settles nothing more.
    _end(end, prompt_tokens=300, completion_tokens=50)
    assert _clocks(redis_client)[0] == pytest.approx(9000 + moved)


@pytest.mark.usefixtures("queued")
def test_a_task_that_used_more_than_its_estimate_moves_its_clocks_on(
    end: Script, redis_client: redis.Redis
) -> None:
    _end(end, prompt_tokens=4000, completion_tokens=2100)
    assert _clocks(redis_client) == (pytest.approx(10_000), pytest.approx(6000))


@pytest.mark.usefixtures("queued")
def test_fair_by_tasks_or_without_usage_nothing_is_settled(
    end: Script, redis_client: redis.Redis
) -> None:
    _end(end, prompt_tokens=300, completion_tokens=50, settle=False)
    assert _clocks(redis_client) == (9000.0, 5000.0)
    redis_client.hdel(keys.task_record(TASK), "usage_counted")
    _end(end, prompt_tokens=0, completion_tokens=0)  # the server counted nothing
    assert _clocks(redis_client) == (9000.0, 5000.0)


def test_a_tenant_with_nothing_queued_has_no_clock_to_settle(
    end: Script, redis_client: redis.Redis
) -> None:
    _end(end, prompt_tokens=300, completion_tokens=50)
    assert _clocks(redis_client) == (None, None)
    assert not redis_client.exists(keys.backlog_tenants(LIST))
