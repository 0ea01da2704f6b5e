"""worker.delivery.broker's batched fetch against a real Redis, through kombu's own consumer.

The fetch script must leave exactly what kombu's BRPOP + ``QoS.append`` leave (so that acks,
rejects and ``restore_visible`` work unchanged), respect the prefetch window, and never take a
message off its list without recording it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
import redis

from worker.delivery import broker

QUEUE = "fetch-test"
TIMEOUT_S = 10


@pytest.fixture
def connection(redis_url: str) -> Iterator[kombu.Connection]:
    with kombu.Connection(redis_url, transport=broker.Transport) as conn:
        yield conn


def _publish(conn: kombu.Connection, count: int, priority: int | None = None) -> None:
    queue = kombu.Queue(QUEUE, routing_key=QUEUE)
    with conn.Producer() as producer:
        for n in range(count):
            producer.publish(
                {"n": n},
                routing_key=QUEUE,
                declare=[queue],
                serializer="json",
                priority=priority,
            )


class Received:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    def __call__(self, body: Any, message: Any) -> None:
        self.messages.append(message)


def _consume(conn: kombu.Connection, prefetch: int, until: int) -> tuple[Any, Received]:
    received = Received()
    channel = conn.channel()
    channel.basic_qos(0, prefetch, False)
    consumer = kombu.Consumer(
        channel, [kombu.Queue(QUEUE, routing_key=QUEUE)], callbacks=[received]
    )
    consumer.consume()
    for _ in range(100):
        if len(received.messages) >= until:
            break
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.1)
    return channel, received


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many BRPOPs and fetches the channels sent."""
    counts = {"brpop": 0, "fetch": 0}
    brpop, fetch = broker.Channel._brpop_start, broker.Channel._fetch

    def counted_brpop(self: broker.Channel, *args: Any, **kwargs: Any) -> Any:
        counts["brpop"] += 1
        return brpop(self, *args, **kwargs)

    def counted_fetch(self: broker.Channel, *args: Any, **kwargs: Any) -> Any:
        counts["fetch"] += 1
        return fetch(self, *args, **kwargs)

    monkeypatch.setattr(broker.Channel, "_brpop_start", counted_brpop)
    monkeypatch.setattr(broker.Channel, "_fetch", counted_fetch)
    return counts


def test_a_backlog_comes_in_one_round_trip_recorded_as_kombu_records_it(
    connection: kombu.Connection, redis_client: redis.Redis, round_trips: dict[str, int]
) -> None:
    _publish(connection, 20)
    raw = [json.loads(item) for item in reversed(redis_client.lrange(QUEUE, 0, -1))]
    channel, received = _consume(connection, prefetch=50, until=20)

    assert round_trips == {"brpop": 0, "fetch": 1}
    assert [m.payload["n"] for m in received.messages] == list(range(20))
    assert redis_client.llen(QUEUE) == 0
    # kombu's QoS.append writes [message, exchange, routing_key] under the delivery tag.
    stored = {
        tag.decode(): json.loads(payload)
        for tag, payload in redis_client.hgetall(broker.UNACKED_KEY).items()
    }
    expected = {
        m["properties"]["delivery_tag"]: [
            m,
            m["properties"]["delivery_info"]["exchange"],
            m["properties"]["delivery_info"]["routing_key"],
        ]
        for m in raw
    }
    assert stored == expected
    assert redis_client.zcard(broker.UNACKED_INDEX_KEY) == 20
    assert channel.qos.recorded == set()  # every recorded tag reached kombu's append
    assert len(channel.qos._delivered) == 20

    for message in received.messages:
        message.ack()
    assert redis_client.hlen(broker.UNACKED_KEY) == 0
    assert redis_client.zcard(broker.UNACKED_INDEX_KEY) == 0


def test_a_fetch_takes_no_more_than_the_window_has_room_for(
    connection: kombu.Connection, redis_client: redis.Redis, round_trips: dict[str, int]
) -> None:
    _publish(connection, 30)
    _channel, received = _consume(connection, prefetch=8, until=8)

    assert len(received.messages) == 8
    assert round_trips == {"brpop": 0, "fetch": 1}
    assert redis_client.llen(QUEUE) == 22
    assert redis_client.hlen(broker.UNACKED_KEY) == 8
    received.messages[0].ack()
    received.messages[1].ack()
    connection.drain_events(timeout=TIMEOUT_S)
    assert len(received.messages) == 10
    assert redis_client.llen(QUEUE) == 20
    assert round_trips == {"brpop": 0, "fetch": 2}


def test_an_empty_queue_sends_the_consumer_back_to_brpop(
    connection: kombu.Connection, redis_client: redis.Redis, round_trips: dict[str, int]
) -> None:
    _publish(connection, 3)
    _channel, received = _consume(connection, prefetch=10, until=3)
    assert round_trips == {"brpop": 0, "fetch": 1}  # 3 of 10 wanted: the queue is empty
    with pytest.raises(TimeoutError):
        connection.drain_events(timeout=0.2)
    assert round_trips == {"brpop": 1, "fetch": 1}
    _publish(connection, 1)
    connection.drain_events(timeout=TIMEOUT_S)
    assert len(received.messages) == 4
    assert redis_client.hlen(broker.UNACKED_KEY) == 4


def test_a_rejected_fetched_message_goes_back_to_its_queue(
    connection: kombu.Connection, redis_client: redis.Redis
) -> None:
    _publish(connection, 3)
    _channel, received = _consume(connection, prefetch=10, until=3)
    received.messages[1].reject(requeue=True)

    assert redis_client.llen(QUEUE) == 1
    back = json.loads(redis_client.lindex(QUEUE, 0))
    assert back["properties"]["delivery_tag"] == received.messages[1].delivery_tag
    assert redis_client.hlen(broker.UNACKED_KEY) == 2


def test_restore_visible_puts_back_a_fetched_message_whose_worker_is_gone(
    connection: kombu.Connection, redis_client: redis.Redis, redis_url: str
) -> None:
    _publish(connection, 2)
    _consume(connection, prefetch=10, until=2)
    # The consumer "dies": its messages are unacked in Redis only. Make them look old.
    for tag in redis_client.zrange(broker.UNACKED_INDEX_KEY, 0, -1):
        redis_client.zadd(broker.UNACKED_INDEX_KEY, {tag: 1.0})
    with kombu.Connection(redis_url, transport=broker.Transport) as other:
        other.default_channel.qos.restore_visible(num=10)

    assert redis_client.llen(QUEUE) == 2
    assert redis_client.hlen(broker.UNACKED_KEY) == 0


@pytest.mark.parametrize(
    ("item", "readable"),
    [
        (b"not json", False),
        (b"\xff\xfe", False),
        (b"[]", False),
        (json.dumps({"properties": {"delivery_tag": "t", "delivery_info": {}}}).encode(), False),
        (
            json.dumps(
                {
                    "properties": {
                        "delivery_tag": "t",
                        "delivery_info": {"exchange": "", "routing_key": "q"},
                    }
                }
            ).encode(),
            True,
        ),
    ],
)
def test_the_brpop_path_reads_envelopes_as_the_script_does(item: bytes, readable: bool) -> None:
    assert (broker.envelope(item) is not None) is readable
