"""worker/delivery/scripts/fetch.lua on its own, against a real Redis (through kombu's consumer:
tests/integration/delivery/test_broker_fetch.py)."""

from __future__ import annotations

import json

import pytest
import redis
from redis.commands.core import Script

from worker import keys, lua
from worker.delivery import backlog, broker

QUEUE, OTHER = "fetch-test", "fetch-test\x06\x163"
UNACKED, INDEX = broker.UNACKED_KEY, broker.UNACKED_INDEX_KEY


@pytest.fixture
def fetch(redis_client: redis.Redis) -> Script:
    return lua.register(redis_client, "worker.delivery", "fetch")


def _run(
    script: Script,
    lists: tuple[str, ...] = (QUEUE,),
    want: int = 10,
    now_s: float = 1.5,
    unreadable_max: int = broker.UNREADABLE_MAX,
    weights: str = "",
) -> list:
    return script(
        keys=[UNACKED, INDEX, keys.unreadable(), *lists],
        args=[want, now_s, unreadable_max, backlog.DEFAULT_TENANT, weights],
    )


def _message(tag: str, routing_key: str = "q") -> str:
    info = {"exchange": "ex", "routing_key": routing_key}
    return json.dumps({"body": tag, "properties": {"delivery_tag": tag, "delivery_info": info}})


def test_a_message_is_recorded_as_unacked_in_kombus_format(
    fetch: Script, redis_client: redis.Redis
) -> None:
    redis_client.lpush(QUEUE, _message("t1"))

    assert _run(fetch, now_s=1234.5) == [QUEUE.encode(), _message("t1").encode(), b"t1"]

    assert json.loads(redis_client.hget(UNACKED, "t1")) == [json.loads(_message("t1")), "ex", "q"]
    assert redis_client.zrange(INDEX, 0, -1, withscores=True) == [(b"t1", 1234.5)]
    assert redis_client.llen(QUEUE) == 0


def test_it_takes_at_most_want_oldest_first_and_list_by_list(
    fetch: Script, redis_client: redis.Redis
) -> None:
    redis_client.lpush(QUEUE, _message("a1"), _message("a2"))
    redis_client.lpush(OTHER, _message("b1"), _message("b2"), _message("b3"))

    reply = _run(fetch, lists=(QUEUE, OTHER), want=4)

    assert [(reply[i], reply[i + 2]) for i in range(0, len(reply), 3)] == [
        (QUEUE.encode(), b"a1"),
        (QUEUE.encode(), b"a2"),
        (OTHER.encode(), b"b1"),
        (OTHER.encode(), b"b2"),
    ]
    assert redis_client.lrange(OTHER, 0, -1) == [_message("b3").encode()]
    assert redis_client.hlen(UNACKED) == 4


def test_empty_lists_give_nothing_and_write_nothing(
    fetch: Script, redis_client: redis.Redis
) -> None:
    assert _run(fetch, lists=(QUEUE, OTHER)) == []
    assert _run(fetch, lists=()) == []
    assert redis_client.dbsize() == 0


def test_a_message_that_is_not_kombus_is_set_aside_untouched(
    fetch: Script, redis_client: redis.Redis
) -> None:
    no_tag = json.dumps({"properties": {"x": 1}}).encode()
    no_info = json.dumps({"properties": {"delivery_tag": "t"}}).encode()
    redis_client.lpush(QUEUE, b"not json", no_tag, no_info, b"[1, 2]")

    assert _run(fetch) == [QUEUE.encode(), None, None] * 4
    assert redis_client.lrange(keys.unreadable(), 0, -1) == [
        b"[1, 2]",
        no_info,
        no_tag,
        b"not json",
    ]
    assert redis_client.llen(QUEUE) == 0
    assert redis_client.hlen(UNACKED) == 0


def test_the_set_aside_list_keeps_the_newest_up_to_its_bound(
    fetch: Script, redis_client: redis.Redis
) -> None:
    redis_client.lpush(QUEUE, b"x1", b"x2", b"x3")
    _run(fetch, unreadable_max=2)
    assert redis_client.lrange(keys.unreadable(), 0, -1) == [b"x3", b"x2"]


def test_a_refused_write_leaves_the_message_in_its_queue(
    fetch: Script, redis_client: redis.Redis
) -> None:
    redis_client.lpush(QUEUE, _message("t"))
    redis_client.set(UNACKED, "a string, not a hash")  # HSET fails: WRONGTYPE

    with pytest.raises(redis.ResponseError):
        _run(fetch)
    # Sorted into its tenant's backlog before the write failed: still queued there.
    assert redis_client.llen(QUEUE) == 0
    assert redis_client.lrange(keys.backlog(QUEUE, backlog.DEFAULT_TENANT), 0, -1) == [
        _message("t").encode()
    ]
    assert redis_client.hget(keys.backlog_size(), QUEUE) == b"1"


@pytest.mark.parametrize(
    "item",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"properties": []}',
        json.dumps({"properties": {"delivery_tag": "t", "delivery_info": {}}}).encode(),
        json.dumps({"properties": {"delivery_tag": 1, "delivery_info": {}}}).encode(),
        _message("t").encode(),
    ],
)
def test_it_reads_envelopes_as_the_brpop_path_does(
    fetch: Script, redis_client: redis.Redis, item: bytes
) -> None:
    redis_client.lpush(QUEUE, item)
    (_, message, tag) = _run(fetch)
    assert (message is not None) is (broker.envelope(item) is not None)
    assert (tag is not None) is (message is not None)
