"""Redis clients, made one way everywhere: bounded waits, and a retry across a reconnect.

A Redis restart breaks every pooled connection; the retry reconnects and runs the command again,
so a caller sees an error only when Redis stays away. Pools block for a free connection rather
than fail past their size (redis-py caps a plain pool at 100 and raises beyond it).

With a ``rediss://`` URL every client speaks TLS and verifies the server: its certificate must
chain to ``GENQUEUE_REDIS_CA_FILE`` (or the system's CAs) and name the host of the URL.
:func:`tls_options` is the one place that says how; Celery's broker and result backend get the
same options (:mod:`worker.celery_app`).

With a ``sentinel://`` URL every client asks the sentinels for the primary and follows it
through a failover (:mod:`worker.redis_io.redis_sentinel`); TLS is then
``GENQUEUE_REDIS_SENTINEL_TLS``.

``results=True`` asks for a client on the Redis of Celery's results: ``GENQUEUE_RESULT_REDIS_URL``
when set, ``REDIS_URL`` otherwise (:func:`results_client` then hands back the client it is given).

A Redis that hangs (stopped, or behind a partition) accepts connections and answers nothing: only
a socket timeout ends a wait on it. The API's clients (:func:`api_async_client`,
:func:`api_sync_client`) wait ``GENQUEUE_API_REDIS_TIMEOUT_S`` for a reply or a free connection
and never retry a timeout (redis-py retries the handshake, the health check and the command
each, so a retried timeout multiplies), so a request that meets a hung Redis is answered 503
within :func:`api_answer_bound_s`, as one that meets a refusing Redis is. A refused or broken
connection is still retried: that is a restart, over in moments.
"""

from __future__ import annotations

import ssl
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from worker.redis_io import redis_sentinel
from worker.settings import Settings

RETRIES = 3
CONNECT_TIMEOUT_S = 1.0
#: The longest wait for a free connection of a pool (the API's: its Redis timeout).
POOL_TIMEOUT_S = 30.0
_RETRY_ON = (RedisConnectionError, RedisTimeoutError)


def uses_tls(url: str) -> bool:
    return url.startswith("rediss://")


def speaks_tls(settings: Settings, url: str | None = None) -> bool:
    """Whether connections to ``url`` (``REDIS_URL`` unless given) use TLS: ``rediss://``, or
    Sentinel with TLS on."""
    url = url or settings.redis_url
    if redis_sentinel.is_sentinel(url):
        return settings.redis_sentinel_tls
    return uses_tls(url)


def tls_options(settings: Settings, url: str | None = None) -> dict[str, Any]:
    """redis-py's TLS arguments for ``url`` (``REDIS_URL`` unless given); none unless
    :func:`speaks_tls`.

    Verification is always on (kombu's own default for ``rediss://`` is off).
    """
    if not speaks_tls(settings, url):
        return {}
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
    files = {
        "ssl_ca_certs": settings.redis_ca_file,
        "ssl_certfile": settings.redis_cert_file,
        "ssl_keyfile": settings.redis_key_file,
    }
    options.update({name: str(path) for name, path in files.items() if path is not None})
    return options


def celery_tls_config(settings: Settings) -> dict[str, Any]:
    """Celery's settings for TLS to the broker and the result backend (none for ``redis://``)."""
    config = {
        "broker_use_ssl": tls_options(settings),
        "redis_backend_use_ssl": tls_options(settings, settings.results_url),
    }
    return {name: options for name, options in config.items() if options}


def sentinel_options(settings: Settings, url: str | None = None) -> dict[str, Any]:
    """kombu's and Celery's transport options for ``url`` (``REDIS_URL`` unless given) when it
    is ``sentinel://`` (none otherwise)."""
    if not redis_sentinel.is_sentinel(url or settings.redis_url):
        return {}
    return redis_sentinel.transport_options(
        settings.redis_sentinel_master, _sentinel_password(settings), tls_options(settings)
    )


def _sentinel_password(settings: Settings) -> str | None:
    secret = settings.redis_sentinel_password
    return secret.get_secret_value() if secret is not None else None


def sync_client(
    settings: Settings,
    *,
    max_connections: int = 64,
    socket_timeout_s: float = 10.0,
    results: bool = False,
    pool_timeout_s: float = POOL_TIMEOUT_S,
    retry_timeouts: bool = True,
) -> redis.Redis:
    """A client on ``settings.redis_url`` (on its primary, for a ``sentinel://`` URL), or with
    ``results`` on the Redis of Celery's results.

    ``pool_timeout_s``: the longest wait for a free connection; ``retry_timeouts``: whether a
    socket timeout is retried like a broken connection.
    """
    retry = Retry(
        ExponentialBackoff(cap=0.5, base=0.05), RETRIES, supported_errors=_retried(retry_timeouts)
    )
    options = _pool_options(max_connections, socket_timeout_s, retry, pool_timeout_s)
    url = settings.results_url if results else settings.redis_url
    if redis_sentinel.is_sentinel(url):
        return redis_sentinel.sync_client(*_sentinel_args(settings), **options)
    pool = redis.BlockingConnectionPool.from_url(url, **options, **tls_options(settings, url))
    return redis.Redis(connection_pool=pool)


def results_client(settings: Settings, client: redis.Redis, max_connections: int) -> redis.Redis:
    """A client on the Redis of Celery's results: ``client`` itself (a client on
    ``REDIS_URL``) unless ``GENQUEUE_RESULT_REDIS_URL`` names another Redis."""
    if not settings.results_apart:
        return client
    return sync_client(settings, max_connections=max_connections, socket_timeout_s=30, results=True)


def _retried(timeouts: bool) -> tuple[type[Exception], ...]:
    return _RETRY_ON if timeouts else (RedisConnectionError,)


def _pool_options(
    max_connections: int, socket_timeout_s: float, retry: Retry | AsyncRetry, pool_timeout_s: float
) -> dict[str, Any]:
    """A pool's bounded waits and its retry across a reconnect, sync and asyncio alike."""
    return {
        "max_connections": max_connections,
        "timeout": pool_timeout_s,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": socket_timeout_s,
        "health_check_interval": 10,
        "retry": retry,
    }


def _sentinel_args(settings: Settings) -> tuple[str, str, str | None, dict[str, Any]]:
    return (
        settings.redis_url,
        settings.redis_sentinel_master,
        _sentinel_password(settings),
        tls_options(settings),
    )


def async_client(
    settings: Settings,
    *,
    max_connections: int = 512,
    socket_timeout_s: float = 10.0,
    results: bool = False,
    pool_timeout_s: float = POOL_TIMEOUT_S,
    retry_timeouts: bool = True,
) -> aioredis.Redis:
    """An asyncio client on ``settings.redis_url`` (on its primary, for ``sentinel://``), or
    with ``results`` on the Redis of Celery's results (the waits as :func:`sync_client`'s)."""
    retry = AsyncRetry(
        ExponentialBackoff(cap=0.5, base=0.05), RETRIES, supported_errors=_retried(retry_timeouts)
    )
    options = _pool_options(max_connections, socket_timeout_s, retry, pool_timeout_s)
    url = settings.results_url if results else settings.redis_url
    if redis_sentinel.is_sentinel(url):
        return redis_sentinel.async_client(*_sentinel_args(settings), **options)
    pool = aioredis.BlockingConnectionPool.from_url(url, **options, **tls_options(settings, url))
    return aioredis.Redis(connection_pool=pool)


def api_answer_bound_s(settings: Settings) -> float:
    """The longest a request of the API waits on a Redis that does not answer before it is
    answered 503: a free connection, the connect, then one reply (the handshake's, the health
    check's or the command's: the first that times out ends the request)."""
    return 2 * settings.api_redis_timeout_s + CONNECT_TIMEOUT_S


def api_async_client(
    settings: Settings, *, max_connections: int, results: bool = False
) -> aioredis.Redis:
    """An asyncio client of the API: every wait ``GENQUEUE_API_REDIS_TIMEOUT_S``, no timeout
    retried."""
    return async_client(
        settings, max_connections=max_connections, results=results, **_api_waits(settings)
    )


def api_sync_client(
    settings: Settings, *, max_connections: int, results: bool = False
) -> redis.Redis:
    """A blocking client of the API (batch enqueues), its waits as :func:`api_async_client`'s."""
    return sync_client(
        settings, max_connections=max_connections, results=results, **_api_waits(settings)
    )


def _api_waits(settings: Settings) -> dict[str, Any]:
    """How long the API's clients wait: ``GENQUEUE_API_REDIS_TIMEOUT_S`` for a reply or a free
    connection, and a timeout is not retried (a hung Redis is answered 503, not waited out)."""
    timeout_s = settings.api_redis_timeout_s
    return {"socket_timeout_s": timeout_s, "pool_timeout_s": timeout_s, "retry_timeouts": False}
