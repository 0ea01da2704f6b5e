"""worker/delivery/scripts/lib/backlog_fair_order.lua through the fetch and the sort scripts,
against a real Redis: the tenant each message names, the fair order of the take, and a backlog that
leaves nothing behind once it is empty."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis
from redis.commands.core import Script

from worker import keys, lua
from worker.delivery import backlog, broker, records

QUEUE = "backlog-test"
UNACKED, INDEX = broker.UNACKED_KEY, broker.UNACKED_INDEX_KEY


@pytest.fixture
def fetch(redis_client: redis.Redis) -> Script:
    return lua.register(redis_client, "worker.delivery", "fetch")


@pytest.fixture
def sort(redis_client: redis.Redis) -> Script:
    return lua.register(redis_client, "worker.delivery", "backlog_sort")


def _take(script: Script, want: int, weights: str = "") -> list[str]:
    reply = script(
        keys=[UNACKED, INDEX, keys.unreadable(), QUEUE],
        args=[want, 1.0, broker.UNREADABLE_MAX, backlog.DEFAULT_TENANT, weights],
    )
    return [reply[i + 2].decode() for i in range(0, len(reply), 3)]


def _sort(script: Script, most: int = backlog.SORT_MAX, weights: str = "") -> list[Any]:
    return script(
        keys=[keys.unreadable(), QUEUE],
        args=[most, broker.UNREADABLE_MAX, backlog.DEFAULT_TENANT, weights],
    )


def _celery(tag: str, args: list[Any], kwargs: dict[str, Any]) -> str:
    """A message as Celery's send_task writes it through kombu (base64 JSON body)."""
    body = base64.b64encode(json.dumps([args, kwargs, {}]).encode()).decode()
    info = {"exchange": "", "routing_key": QUEUE}
    properties = {"delivery_tag": tag, "delivery_info": info, "body_encoding": "base64"}
    return json.dumps({"body": body, "headers": {"id": tag}, "properties": properties})


def _of(tenant: str | None, tag: str) -> str:
    request: dict[str, Any] = {"prompt": "x" * (len(tag) % 5)}
    if tenant is not None:
        request["tenant"] = tenant
    return _celery(tag, [], {"request": request})


def _push(client: redis.Redis, *messages: str) -> None:
    for message in messages:
        client.lpush(QUEUE, message)  # as kombu publishes: oldest at the tail


@pytest.mark.parametrize(
    ("message", "tenant"),
    [
        (_celery("t", [], {"request": {"prompt": "hi", "tenant": "acme"}}), "acme"),
        (_celery("t", [{"prompt": "hi", "tenant": "acme.eu-1"}], {}), "acme.eu-1"),
        (_celery("t", [], {"request": {"prompt": "hi"}}), backlog.DEFAULT_TENANT),
        (_celery("t", [], {"request": {"tenant": "no spaces"}}), backlog.DEFAULT_TENANT),
        (_celery("t", [], {"request": {"tenant": "x" * 65}}), backlog.DEFAULT_TENANT),
        (_celery("t", [], {"request": {"tenant": 7}}), backlog.DEFAULT_TENANT),
        (_celery("t", [1, 2], {"request": {"tenant": "acme"}}), "acme"),
        (json.dumps({"body": "not base64!", "properties": {
            "delivery_tag": "t", "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": "q"}}}), backlog.DEFAULT_TENANT),
    ],
)  # fmt: skip
def test_a_message_goes_to_the_tenant_its_request_names(
    sort: Script, redis_client: redis.Redis, message: str, tenant: str
) -> None:
    _push(redis_client, message)
    assert _sort(sort) == [1, 0]
    assert redis_client.lrange(keys.backlog(QUEUE, tenant), 0, -1) == [message.encode()]
    assert redis_client.llen(QUEUE) == 0


def test_tenants_take_turns_however_the_backlog_came(
    fetch: Script, redis_client: redis.Redis
) -> None:
    _push(redis_client, *(_of("a", f"a{n}") for n in range(6)), _of("b", "b0"), _of("b", "b1"))
    assert _sort(lua.register(redis_client, "worker.delivery", "backlog_sort")) == [8, 0]
    assert _take(fetch, 6) == ["a0", "b0", "a1", "b1", "a2", "a3"]


def test_a_heavier_tenant_takes_more_turns(fetch: Script, redis_client: redis.Redis) -> None:
    _push(
        redis_client, *(_of("a", f"a{n}") for n in range(8)), *(_of("b", f"b{n}") for n in range(8))
    )
    order = _take(fetch, 8, weights="b=3.0")
    # The fetch sorts only as many as it takes: the first 8 are a's; then b comes in at 3:1.
    assert order == [f"a{n}" for n in range(8)]
    order = _take(fetch, 8, weights="b=3.0")
    assert order == [f"b{n}" for n in range(8)]


def test_a_sorted_heavier_tenant_gets_three_turns_to_one(
    fetch: Script, sort: Script, redis_client: redis.Redis
) -> None:
    _push(
        redis_client, *(_of("a", f"a{n}") for n in range(8)), *(_of("b", f"b{n}") for n in range(8))
    )
    _sort(sort, weights="b=3.0")
    order = _take(fetch, 8, weights="b=3.0")
    assert "".join(tag[0] for tag in order) == "bbabbbba"  # 3:1, the oldest of each first


def test_a_newcomer_is_next_after_a_long_sorted_backlog(
    fetch: Script, sort: Script, redis_client: redis.Redis
) -> None:
    _push(redis_client, *(_of("a", f"a{n}") for n in range(50)))
    _sort(sort)
    assert _take(fetch, 10) == [f"a{n}" for n in range(10)]
    _push(redis_client, _of("b", "b0"))
    # A fetch sorts the newcomer as it goes, and it takes the next turn but one (a's is due).
    assert _take(fetch, 3) == ["a10", "b0", "a11"]


def test_a_sort_moves_at_most_its_bound_and_says_there_is_more(
    sort: Script, redis_client: redis.Redis
) -> None:
    _push(redis_client, *(_of("a", f"a{n}") for n in range(5)))
    assert _sort(sort, most=3) == [3, 1]
    assert redis_client.llen(QUEUE) == 2
    assert redis_client.hget(keys.backlog_size(), QUEUE) == b"3"
    assert _sort(sort, most=3) == [2, 0]


def test_an_unreadable_message_is_set_aside_by_the_sort_too(
    sort: Script, redis_client: redis.Redis
) -> None:
    _push(redis_client, "not json", _of("a", "a0"))
    assert _sort(sort) == [2, 0, QUEUE.encode()]
    assert redis_client.lrange(keys.unreadable(), 0, -1) == [b"not json"]


def test_each_message_is_in_one_place_and_nothing_is_left_once_taken(
    fetch: Script, sort: Script, redis_client: redis.Redis
) -> None:
    _push(redis_client, *(_of(t, f"{t}{n}") for n in range(4) for t in ("a", "b", None)))
    _sort(sort, most=5)
    queued = redis_client.llen(QUEUE) + backlog.size_of(
        redis_client.execute_command(*backlog.size_command([QUEUE]))
    )
    assert queued == 12
    assert len(_take(fetch, 20)) == 12
    assert redis_client.hlen(UNACKED) == 12
    assert sorted(k.decode() for k in redis_client.keys("*")) == sorted([UNACKED, INDEX])


def test_a_task_record_names_the_tenant_without_decoding_the_body(
    sort: Script, redis_client: redis.Redis
) -> None:
    # As a genqueue producer writes it (worker.keys, worker.delivery.records: the names the
    # script uses).
    redis_client.hset(keys.task_record("t1"), records.F_TENANT, "acme")
    message = _celery("t1", [], {"request": {"prompt": "hi", "tenant": "other"}})
    _push(redis_client, message)
    _sort(sort)
    assert redis_client.lrange(keys.backlog(QUEUE, "acme"), 0, -1) == [message.encode()]


def test_the_scripts_name_the_keys_as_worker_keys_does(
    fetch: Script, sort: Script, redis_client: redis.Redis
) -> None:
    _push(redis_client, _of("a", "a0"), _of("a", "a1"))
    _sort(sort)
    assert redis_client.exists(keys.backlog(QUEUE, "a"), keys.backlog_tenants(QUEUE)) == 2
    _take(fetch, 1)
    assert redis_client.exists(keys.backlog_clock(QUEUE)) == 1
