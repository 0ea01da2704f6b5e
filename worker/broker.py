"""kombu's Redis transport with one Redis client per channel instead of one per command.

kombu's Redis channel builds a new ``redis.Redis`` for every publish, ack and restore
(``Channel.conn_or_acquire``), and redis-py's constructor copies its whole table of response
callbacks each time: 9 % of a worker's CPU per task in the profile (BENCHMARKS.md). A client is
only a handle on the channel's connection pool and is safe to share between greenlets, so this
channel keeps one per pool and builds it again when kombu replaces the pool.

:func:`install` maps the ``redis://`` and ``rediss://`` schemes to this transport in the
process that calls it (the worker); URLs, options and TLS handling are kombu's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kombu.transport
from kombu.transport import redis as kombu_redis

SCHEMES = ("redis", "rediss")


class Channel(kombu_redis.Channel):  # type: ignore[misc]
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


def install() -> None:
    """Use :class:`Transport` for Redis broker URLs in this process."""
    name = f"{__name__}:Transport"
    for scheme in SCHEMES:
        kombu.transport.TRANSPORT_ALIASES[scheme] = name
        kombu.transport._transport_cache.pop(scheme, None)
