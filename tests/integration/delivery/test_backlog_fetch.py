"""worker.delivery.broker's fetch over the backlog sorted by tenant, through kombu's own
consumer against a real Redis (the script itself:
tests/integration/delivery/test_backlog_lua.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
import redis

from worker import keys
from worker.delivery import backlog, broker

QUEUE = "backlog-fetch-test"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def connection(redis_url: str) -> Iterator[kombu.Connection]:
    with kombu.Connection(redis_url, transport=broker.Transport) as conn:
        yield conn


def _publish(conn: kombu.Connection, count: int, queue: str = QUEUE) -> None:
    declared = kombu.Queue(queue, routing_key=queue)
    with conn.Producer() as producer:
        for n in range(count):
            producer.publish({"n": n}, routing_key=queue, declare=[declared], serializer="json")


class Received:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    def __call__(self, body: Any, message: Any) -> None:
        self.messages.append(message)


def _consumer(conn: kombu.Connection, prefetch: int) -> Received:
    received = Received()
    channel = conn.channel()
    channel.basic_qos(0, prefetch, False)
    consumer = kombu.Consumer(
        channel, [kombu.Queue(QUEUE, routing_key=QUEUE)], callbacks=[received]
    )
    consumer.consume()
    return received


def _drain(conn: kombu.Connection, received: Received, until: int, polls: int = 100) -> None:
    for _ in range(polls):
        if len(received.messages) >= until:
            return
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.1)


def test_a_full_window_sorts_what_arrives_and_takes_it_when_it_has_room(
    connection: kombu.Connection, redis_client: redis.Redis
) -> None:
    _publish(connection, 5)
    received = _consumer(connection, prefetch=2)
    _drain(connection, received, until=2)
    assert len(received.messages) == 2
    # The window is full: the rest is sorted into the backlog, none taken.
    _drain(connection, received, until=99, polls=10)
    assert redis_client.llen(QUEUE) == 0
    assert redis_client.hget(keys.backlog_size(), QUEUE) == b"3"
    assert len(received.messages) == 2
    received.messages[0].ack()
    _drain(connection, received, until=3)
    assert [m.payload["n"] for m in received.messages] == [0, 1, 2]
    assert redis_client.hget(keys.backlog_size(), QUEUE) == b"2"


def test_a_consumer_waiting_in_brpop_finds_a_backlog_another_worker_sorted(
    connection: kombu.Connection, redis_client: redis.Redis
) -> None:
    received = _consumer(connection, prefetch=10)
    with pytest.raises(TimeoutError):
        connection.drain_events(timeout=0.2)  # nothing queued: waiting in BRPOP
    # Another worker sorted messages into the backlog: kombu's list never held them, so the
    # BRPOP does not wake; it times out (1 s) and the consumer looks at the backlog.
    _publish(connection, 3, queue="staging")
    redis_client.rename("staging", keys.backlog(QUEUE, backlog.DEFAULT_TENANT))
    redis_client.zadd(keys.backlog_tenants(QUEUE), {backlog.DEFAULT_TENANT: 1.0})
    redis_client.hset(keys.backlog_size(), QUEUE, 3)
    _drain(connection, received, until=3, polls=40)
    assert [m.payload["n"] for m in received.messages] == [0, 1, 2]
    assert redis_client.hlen(keys.backlog_size()) == 0
    assert redis_client.hlen(broker.UNACKED_KEY) == 3
