"""kombu's Redis transport, with two savings per message and no idle slots.

kombu's Redis channel builds a new ``redis.Redis`` for every publish, ack and restore
(``Channel.conn_or_acquire``), and redis-py's constructor copies its whole table of response
callbacks each time: 9 % of a worker's CPU per task in the profile (BENCHMARKS.md). A client is
only a handle on the channel's connection pool and is safe to share between greenlets, so this
channel keeps one per pool and builds it again when kombu replaces the pool.

And a task's end script (:mod:`worker.lifecycle`) removes its message's unacked entries in the
same round trip as the result; :func:`settle` records that, and the ack that Celery sends next
then only does kombu's local bookkeeping instead of a round trip of its own.

While every slot of the worker's prefetch window is taken, kombu's consumer stops fetching and
waits up to 2 s (Celery's poll timeout) before it looks again: a task that ends meanwhile leaves
its slot idle for a second on average, 17 % of the throughput when calls take 5 s. This poller
looks again every ``FULL_WINDOW_POLL_S`` while the window is full.

:func:`install` maps the ``redis://`` and ``rediss://`` schemes to this transport in the
process that calls it (the worker); URLs, options and TLS handling are kombu's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kombu.transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

SCHEMES = ("redis", "rediss")


#: The messages whose unacked entries a task's end script removed, until their ack.
_settled: dict[str, None] = {}
#: A bound on :data:`_settled`, should acks never come (the oldest entries go first).
SETTLED_MAX = 100_000


def settle(delivery_tag: str) -> None:
    """The unacked entries of ``delivery_tag`` are gone from Redis: its ack needs no trip."""
    _settled[delivery_tag] = None
    if len(_settled) > SETTLED_MAX:
        del _settled[next(iter(_settled))]


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    def ack(self, delivery_tag: str) -> None:
        if _settled.pop(delivery_tag, 0) is None:
            virtual.QoS.ack(self, delivery_tag)
            return
        super().ack(delivery_tag)


#: How often the consumer looks for a freed slot while its prefetch window is full.
FULL_WINDOW_POLL_S = 0.05


class MultiChannelPoller(kombu_redis.MultiChannelPoller):  # type: ignore[misc]
    def get(self, callback: Any, timeout: float | None = None) -> Any:
        consuming = [channel for channel in self._channels if channel.active_queues]
        if consuming and not any(channel.qos.can_consume() for channel in consuming):
            timeout = FULL_WINDOW_POLL_S if timeout is None else min(timeout, FULL_WINDOW_POLL_S)
        return super().get(callback, timeout)


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    QoS = QoS
    _shared_client: Any = None
    _shared_pool: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        if self._shared_pool is not pool:
            self._shared_client = self._create_client()
            self._shared_pool = pool
        yield self._shared_client


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = MultiChannelPoller()  # type: ignore[assignment]


#: kombu's unacked hash and index (genqueue sets no ``global_keyprefix``).
UNACKED_KEY: str = Channel.unacked_key
UNACKED_INDEX_KEY: str = Channel.unacked_index_key


def install() -> None:
    """Use :class:`Transport` for Redis broker URLs in this process."""
    name = f"{__name__}:Transport"
    for scheme in SCHEMES:
        kombu.transport.TRANSPORT_ALIASES[scheme] = name
        kombu.transport._transport_cache.pop(scheme, None)
