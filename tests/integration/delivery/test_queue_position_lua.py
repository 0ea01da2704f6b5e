"""worker/delivery/scripts/queue_position.lua against a real Redis: a queued task's place from
its backlog number, the other tenants' turns by weight, more urgent bands, and the rate of the
completion stream; every count bounded (no scan of a list)."""

from __future__ import annotations

import time

import pytest
import redis
from redis.commands.core import Script

from api_producer.task_redis import place_of
from tests.integration.delivery.test_backlog_lua import QUEUE, _of, _sort, _take
from tests.integration.limits import test_admission_lua as admission
from worker import keys, lua
from worker.delivery import backlog

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def place(redis_client: redis.Redis) -> Script:
    return lua.register(redis_client, "worker.delivery", "queue_position")


@pytest.fixture
def fetch(redis_client: redis.Redis) -> Script:
    return lua.register(redis_client, "worker.delivery", "fetch")


@pytest.fixture
def sort(redis_client: redis.Redis) -> Script:
    return lua.register(redis_client, "worker.delivery", "backlog_sort")


def _send(client: redis.Redis, tenant: str, tag: str, step: int = 0, created_s: int = 0) -> None:
    """A task as a genqueue producer sends it: its record, then its message."""
    client.hset(
        keys.task_record(tag),
        mapping={"tenant": tenant, "queue": QUEUE, "priority": str(step),
                 "created_at": f"2026-01-01T00:00:{created_s:02d}.000Z"},
    )  # fmt: skip
    client.lpush(QUEUE if step == 0 else keys.queue_list(QUEUE, step), _of(tenant, tag))


def _position(script: Script, tag: str, weights: str = "", endpoint: str = "default") -> int | None:
    answer = script(
        keys=[keys.task_record(tag), keys.EVENTS_STREAM],
        args=[endpoint, weights, backlog.DEFAULT_TENANT],
    )
    return place_of(answer).queue_position


def test_a_tenant_behind_a_backlog_is_near_the_head_and_the_backlogs_last_far(
    redis_client: redis.Redis, place: Script, sort: Script, fetch: Script
) -> None:
    for n in range(300):
        _send(redis_client, "a", f"a{n}")
    _send(redis_client, "b", "b0")
    # Not sorted yet: every message of the list counts (301 less itself).
    assert _position(place, "b0") == 300
    _sort(sort)
    # b's first turn comes after a's one (a tie goes first), a's last after its 299 and b's.
    assert _position(place, "b0") == 1
    assert _position(place, "a299") == 300
    assert _position(place, "a0") == 1
    # Taken in fair order (a, b, then a's): the places fall by what went.
    taken = _take(fetch, 100)
    assert taken[:2] == ["a0", "b0"]
    assert _position(place, "a299") == 200
    assert _position(place, "a150") == 51
    # b's numbers went with its last message; a's stay while it has some.
    assert redis_client.hkeys(keys.backlog_seq(QUEUE)) == [b"s:a", b"t:a"]


def test_a_tenants_weight_gives_the_others_fewer_turns_ahead(
    redis_client: redis.Redis, place: Script, sort: Script
) -> None:
    for n in range(100):
        _send(redis_client, "a", f"a{n}")
    for n in range(10):
        _send(redis_client, "b", f"b{n}")
    _sort(sort)
    assert _position(place, "b9") == 9 + 10
    # At weight 2, b's 10th comes after 10 turns of its own and 5 of a's.
    assert _position(place, "b9", "b=2.0") == 9 + 5


def test_more_urgent_bands_come_first(
    redis_client: redis.Redis, place: Script, sort: Script
) -> None:
    _send(redis_client, "a", "late", step=3)
    for n in range(7):
        _send(redis_client, "b", f"urgent{n}", step=1)
    assert _position(place, "urgent0") == 6  # not sorted: the others of its list count
    lists = [keys.queue_list(QUEUE, step) for step in (0, 1, 3)]
    sort(keys=[keys.unreadable(), *lists], args=[500, 10, backlog.DEFAULT_TENANT, ""])
    assert _position(place, "late") == 7
    assert _position(place, "urgent0") == 0


def test_the_rate_is_of_the_recent_completions(
    redis_client: redis.Redis, place: Script, sort: Script
) -> None:
    _send(redis_client, "a", "x")
    _send(redis_client, "a", "y")
    _sort(sort)
    args = [keys.task_record("y"), keys.EVENTS_STREAM]
    found = place_of(place(keys=args, args=["default", "", backlog.DEFAULT_TENANT]))
    assert (found.queue_position, found.estimated_start_s) == (1, None)
    now_ms = int(time.time() * 1000)
    for n in range(10):  # 10 completions over the last 5 s: 2 a second
        redis_client.xadd(
            keys.EVENTS_STREAM, {"task_id": str(n)}, id=f"{now_ms - 5000 + n * 500}-0"
        )
    found = place_of(place(keys=args, args=["default", "", backlog.DEFAULT_TENANT]))
    assert found.queue_position == 1
    assert found.estimated_start_s is not None and 0.4 <= found.estimated_start_s <= 0.6


def test_a_record_without_a_queue_or_of_a_task_over_has_no_place(
    redis_client: redis.Redis, place: Script
) -> None:
    assert _position(place, "unknown") is None
    _send(redis_client, "a", "over")
    assert _position(place, "over") == 0
    redis_client.hset(keys.task_record("over"), "finished_at", "2026-01-01T00:01:00.000Z")
    assert _position(place, "over") is None


def test_a_task_a_worker_holds_counts_its_tenants_older_waiters_and_the_others_turns(
    redis_client: redis.Redis, place: Script, sort: Script, fetch: Script
) -> None:
    for n in range(3):
        _send(redis_client, "a", f"a{n}", created_s=n + 1)
    _sort(sort)
    assert _take(fetch, 3) == ["a0", "a1", "a2"]
    _send(redis_client, "b", "b0", created_s=9)
    _sort(sort)
    # The workers hold a's three: they wait in the admission queue of the endpoint "ep".
    endpoint = admission.Endpoint(redis_client)
    assert endpoint.ask("running") == 1
    acquire = lua.register(redis_client, "worker.limits", "slot_acquire")
    for n in (2, 0, 1):  # joined in any order: each counts those created before it
        task = f"a{n}"
        args = [1, admission.TTL_MS, f"t{n}", "1000:5000", 0, 0, 0, "a", "1.0", admission.OWNER]
        args += [0, 1, "c", 30_000, admission.EP]
        lease = [admission.LEASE, admission.BREAKER, admission.PROBE, admission.RATE]
        lease += admission.QUEUE
        claim = [keys.running(task), keys.task_record(task)]
        assert int(acquire(keys=[*lease, *claim], args=args)[0]) == 0  # waiting
    assert [_position(place, f"a{n}", endpoint=admission.EP) for n in range(3)] == [
        0 + 1,
        1 + 1,
        2 + 1,
    ]
    # b's task in the backlog: one turn of a's goes first.
    assert _position(place, "b0", endpoint=admission.EP) == 1
