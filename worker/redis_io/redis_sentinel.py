"""Redis Sentinel: clients that follow the primary through a failover.

``REDIS_URL`` in Celery's Sentinel form names the sentinels, not Redis:
``sentinel://:password@host1:26379;sentinel://host2:26379/0``. The primary's name is
``GENQUEUE_REDIS_SENTINEL_MASTER``; the Redis password, user and database come from the first
address (as Celery and kombu read them); the sentinels' own password is
``GENQUEUE_REDIS_SENTINEL_PASSWORD``; with ``GENQUEUE_REDIS_SENTINEL_TLS`` the sentinels and
Redis are spoken to over TLS, verified as for ``rediss://``.

A connection asks a sentinel for the primary's address whenever it connects, so a client whose
connection broke (the primary died) reconnects to the new primary once the sentinels elected it:
the election is an outage that every round trip already rides out
(:mod:`worker.redis_io.redis_outage`).

A primary that is demoted while clients still hold connections to it (a network partition
healed, ``SENTINEL FAILOVER``) answers writes with ``READONLY`` and unblocks a waiting ``BRPOP``
with ``UNBLOCKED``. redis-py turns a plain ``READONLY`` (and, since 8.2, ``UNBLOCKED``) into a
reconnect, but Redis 6 wraps the one a Lua script hits in a script error, which kombu would take
for a failed command (as it would 8.1's ``UNBLOCKED``). :class:`FailoverConnection` turns all
three into a ``ConnectionError`` after dropping the connection, so the retry reconnects to the
new primary.

When no sentinel names a primary, the error says why each sentinel failed (a certificate the
CA did not sign, say), in genqueue's words (:class:`ExplainingSentinel`). A sentinel that answers
with an error is passed over for the next one, as redis-py 8.2 does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as async_sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)

#: The redis-py methods this module copies (``discover_master``, with each sentinel's error in
#: the ``MasterNotFoundError``) or extends (``read_response``, which knows a demoted primary by
#: some of its errors), and a digest of their source in redis-py of worker.upstream.TESTED.
UPSTREAM_COPIES = {
    "redis.sentinel:Sentinel.discover_master": "5e24ee0794f2bf2f",
    "redis.asyncio.sentinel:Sentinel.discover_master": "e6475fbe35c92a88",
    "redis.sentinel:SentinelManagedConnection.read_response": "bc56c96fb6e493a6",
    "redis.asyncio.sentinel:SentinelManagedConnection.read_response": "a2e4e225da7053de",
}

SCHEME = "sentinel://"
SEPARATOR = ";"
DEFAULT_PORT = 26379
#: How long a sentinel may take to connect and to answer, before the next one is asked.
SENTINEL_TIMEOUT_S = 1.0


def is_sentinel(url: str) -> bool:
    return url.startswith(SCHEME)


@dataclass(frozen=True)
class SentinelUrl:
    """The parts of a ``sentinel://`` URL; the password never appears in its repr."""

    sentinels: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None

    def __repr__(self) -> str:
        return f"SentinelUrl(sentinels={self.sentinels!r}, db={self.db})"


def parse(url: str) -> SentinelUrl:
    """Split ``url``; a :class:`ValueError` says what is wrong without quoting the URL.

    kombu and Celery read the database from the first address only, so an address that names
    another one is refused rather than silently ignored.
    """
    sentinels = []
    databases = []
    for number, part in enumerate(url.split(SEPARATOR), start=1):
        if not is_sentinel(part):
            raise ValueError(f"address {number} must start with sentinel://")
        try:
            parts = urlsplit(part)
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError(f"address {number} has an invalid port") from None
        if not parts.hostname:
            raise ValueError(f"address {number} has no host")
        sentinels.append((parts.hostname, port))
        databases.append(_database(parts.path, number))
    db = databases[0] or 0
    if any(named not in (None, db) for named in databases[1:]):
        raise ValueError("name the database on the first address (kombu and Celery read it there)")
    first = urlsplit(url.split(SEPARATOR, 1)[0])
    return SentinelUrl(
        sentinels=tuple(sentinels),
        db=db,
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
    )


def _database(path: str, number: int) -> int | None:
    text = path.strip("/")
    if not text:
        return None
    if not text.isdigit():
        raise ValueError(f"the database of address {number} (after its /) must be a number")
    return int(text)


def demoted(err: ResponseError) -> bool:
    """Whether ``err`` says the server is no longer the primary (see the module's doc)."""
    text = str(err)
    return "-READONLY " in text or text.startswith(("READONLY ", "UNBLOCKED "))


class FailoverConnection(SentinelManagedConnection):
    """A connection to the primary that reconnects when the primary it holds was demoted.

    It also asks the sentinels again when a retry reconnects it: redis-py's retry reconnects
    a dropped connection to the address it had (``connect_check_health``), which after a
    failover is the old primary.
    """

    def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        if not self._sock:
            self.connect()
        super().send_packed_command(*args, **kwargs)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except ResponseError as err:
            if not (self.connection_pool.is_master and demoted(err)):
                raise
            self.disconnect()
            raise RedisConnectionError("the primary was demoted to a replica") from None


class FailoverSSLConnection(FailoverConnection, redis.SSLConnection):
    pass


class AsyncFailoverConnection(async_sentinel.SentinelManagedConnection):
    """:class:`FailoverConnection` for asyncio clients."""

    async def send_packed_command(self, *args: Any, **kwargs: Any) -> None:
        if not self.is_connected:
            await self.connect()
        await super().send_packed_command(*args, **kwargs)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as err:
            if not (self.connection_pool.is_master and demoted(err)):
                raise
            await self.disconnect()
            raise RedisConnectionError("the primary was demoted to a replica") from None


class AsyncFailoverSSLConnection(AsyncFailoverConnection, aioredis.SSLConnection):
    pass


#: A sentinel that could not be asked, and why.
SentinelErrors = list[tuple[Any, BaseException]]


def _no_master(service_name: str, errors: SentinelErrors) -> str:
    """``MasterNotFoundError``'s text: redis-py's, with each sentinel's error as text (redis-py 8
    gives ``repr(err)``, which is ``network:ConnectionError`` and no more)."""
    reasons = ", ".join(f"sentinel {_address(client)} - {err}" for client, err in errors)
    return f"No master found for {service_name!r}" + (f" : {reasons}" if reasons else "")


def _address(client: Any) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"


def _primary_from(
    manager: Any, masters: Any, service_name: str, sentinel_no: int
) -> tuple[str, int] | None:
    """The primary's address in sentinel ``sentinel_no``'s answer (``SENTINEL MASTERS``, read
    as a dict as redis-py does), that sentinel moved first for next time; ``None`` when it
    names no healthy primary. The body of redis-py's ``discover_master`` loop, sync or not."""
    state = masters.get(service_name)
    if not state or not manager.check_master_state(state, service_name):
        return None
    sentinels = manager.sentinels
    sentinels[0], sentinels[sentinel_no] = sentinels[sentinel_no], sentinels[0]
    forced = manager._force_master_ip
    return (forced if forced is not None else state["ip"]), state["port"]


class ExplainingSentinel(Sentinel):
    """redis-py's ``Sentinel`` whose ``MasterNotFoundError`` says why each sentinel failed."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        # redis-py's, but for the errors' text (UPSTREAM_COPIES).
        errors: SentinelErrors = []
        for sentinel_no, sentinel in enumerate(self.sentinels):
            try:
                masters = sentinel.sentinel_masters()
            except (RedisConnectionError, ResponseError, RedisTimeoutError) as err:
                errors.append((sentinel, err))
                continue
            if (found := _primary_from(self, masters, service_name, sentinel_no)) is not None:
                return found
        last = errors[-1][1] if errors else None
        raise MasterNotFoundError(_no_master(service_name, errors)) from last


class AsyncExplainingSentinel(async_sentinel.Sentinel):
    """:class:`ExplainingSentinel` for asyncio clients."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        errors: SentinelErrors = []
        for sentinel_no, sentinel in enumerate(self.sentinels):
            try:
                masters = await sentinel.sentinel_masters()
            except (RedisConnectionError, ResponseError, RedisTimeoutError) as err:
                errors.append((sentinel, err))
                continue
            if (found := _primary_from(self, masters, service_name, sentinel_no)) is not None:
                return found
        last = errors[-1][1] if errors else None
        raise async_sentinel.MasterNotFoundError(_no_master(service_name, errors)) from last


class BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """A Sentinel pool that waits for a free connection rather than fail past its size."""


class AsyncBlockingSentinelPool(
    async_sentinel.SentinelConnectionPool, aioredis.BlockingConnectionPool
):
    """:class:`BlockingSentinelPool` for asyncio clients."""


def sentinel_kwargs(
    password: str | None, tls: dict[str, Any], *, asynchronous: bool = False
) -> dict[str, Any]:
    """How to connect to the sentinels themselves (not to Redis).

    No retries: the next sentinel is asked at once instead (redis-py's default retries a
    sentinel that is down, or refuses the password, with backoff up to 10 s, three times).
    """
    retry = AsyncRetry(NoBackoff(), 0) if asynchronous else Retry(NoBackoff(), 0)
    options: dict[str, Any] = {
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "retry": retry,
    }
    if password is not None:
        options["password"] = password
    if tls:
        options.update(tls, ssl=True)
    return options


def _master_kwargs(
    target: SentinelUrl, tls: dict[str, Any], ssl_class: type, plain: type
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"db": target.db, "connection_class": ssl_class if tls else plain}
    kwargs.update(tls)
    if target.username is not None:
        kwargs["username"] = target.username
    if target.password is not None:
        kwargs["password"] = target.password
    return kwargs


def sync_client(
    url: str, master: str, password: str | None, tls: dict[str, Any], **pool: Any
) -> redis.Redis:
    """A client on the primary named ``master`` (``pool``: the pool's options)."""
    target = parse(url)
    manager = ExplainingSentinel(
        list(target.sentinels), sentinel_kwargs=sentinel_kwargs(password, tls)
    )
    kwargs = _master_kwargs(target, tls, FailoverSSLConnection, FailoverConnection)
    client: redis.Redis = manager.master_for(
        master, connection_pool_class=BlockingSentinelPool, **kwargs, **pool
    )
    return client


def async_client(
    url: str, master: str, password: str | None, tls: dict[str, Any], **pool: Any
) -> aioredis.Redis:
    """:func:`sync_client` for asyncio."""
    target = parse(url)
    manager = AsyncExplainingSentinel(
        list(target.sentinels), sentinel_kwargs=sentinel_kwargs(password, tls, asynchronous=True)
    )
    kwargs = _master_kwargs(target, tls, AsyncFailoverSSLConnection, AsyncFailoverConnection)
    client: aioredis.Redis = manager.master_for(
        master, connection_pool_class=AsyncBlockingSentinelPool, **kwargs, **pool
    )
    return client


def transport_options(master: str, password: str | None, tls: dict[str, Any]) -> dict[str, Any]:
    """kombu's and Celery's Sentinel options (``broker_transport_options`` and
    ``result_backend_transport_options``)."""
    return {"master_name": master, "sentinel_kwargs": sentinel_kwargs(password, tls)}
