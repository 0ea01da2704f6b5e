"""Redis clients, made one way everywhere: bounded waits, and a retry across a reconnect.

A Redis restart breaks every pooled connection; the retry reconnects and runs the command again,
so a caller sees an error only when Redis stays away. Pools block for a free connection rather
than fail past their size (redis-py caps a plain pool at 100 and raises beyond it).

With a ``rediss://`` URL every client speaks TLS and verifies the server: its certificate must
chain to ``GENQUEUE_REDIS_CA_FILE`` (or the system's CAs) and name the host of the URL.
:func:`tls_options` is the one place that says how; Celery's broker and result backend get the
same options (:mod:`worker.celery_app`).

With a ``sentinel://`` URL every client asks the sentinels for the primary and follows it
through a failover (:mod:`worker.redis_sentinel`); TLS is then ``GENQUEUE_REDIS_SENTINEL_TLS``.

``results=True`` asks for a client on the Redis of Celery's results: ``GENQUEUE_RESULT_REDIS_URL``
when set, ``REDIS_URL`` otherwise (:func:`results_client` then hands back the client it is given).
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

from worker import redis_sentinel
from worker.settings import Settings

RETRIES = 3
CONNECT_TIMEOUT_S = 1.0
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
) -> redis.Redis:
    """A client on ``settings.redis_url`` (on its primary, for a ``sentinel://`` URL), or with
    ``results`` on the Redis of Celery's results."""
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES, supported_errors=_RETRY_ON)
    options = _pool_options(max_connections, socket_timeout_s, retry)
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


def _pool_options(
    max_connections: int, socket_timeout_s: float, retry: Retry | AsyncRetry
) -> dict[str, Any]:
    """A pool's bounded waits and its retry across a reconnect, sync and asyncio alike."""
    return {
        "max_connections": max_connections,
        "timeout": 30,
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
) -> aioredis.Redis:
    """An asyncio client on ``settings.redis_url`` (on its primary, for ``sentinel://``), or
    with ``results`` on the Redis of Celery's results."""
    retry = AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES, supported_errors=_RETRY_ON)
    options = _pool_options(max_connections, socket_timeout_s, retry)
    url = settings.results_url if results else settings.redis_url
    if redis_sentinel.is_sentinel(url):
        return redis_sentinel.async_client(*_sentinel_args(settings), **options)
    pool = aioredis.BlockingConnectionPool.from_url(url, **options, **tls_options(settings, url))
    return aioredis.Redis(connection_pool=pool)
