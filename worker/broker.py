"""kombu's Redis transport, with two savings per message.

kombu's Redis channel builds a new ``redis.Redis`` for every publish, ack and restore
(``Channel.conn_or_acquire``), and redis-py's constructor copies its whole table of response
callbacks each time: 9 % of a worker's CPU per task in the profile (BENCHMARKS.md). A client is
only a handle on the channel's connection pool and is safe to share between greenlets, so this
channel keeps one per pool and builds it again when kombu replaces the pool.

And a task's end script (:mod:`worker.lifecycle`) removes its message's unacked entries in the
same round trip as the result; :func:`settle` records that, and the ack that Celery sends next
then only does kombu's local bookkeeping instead of a round trip of its own.

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


#: kombu's unacked hash and index (genqueue sets no ``global_keyprefix``).
UNACKED_KEY: str = Channel.unacked_key
UNACKED_INDEX_KEY: str = Channel.unacked_index_key


def install() -> None:
    """Use :class:`Transport` for Redis broker URLs in this process."""
    name = f"{__name__}:Transport"
    for scheme in SCHEMES:
        kombu.transport.TRANSPORT_ALIASES[scheme] = name
        kombu.transport._transport_cache.pop(scheme, None)
