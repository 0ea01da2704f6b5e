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


def speaks_tls(settings: Settings) -> bool:
    """Whether genqueue's Redis connections use TLS: ``rediss://``, or Sentinel with TLS on."""
    if redis_sentinel.is_sentinel(settings.redis_url):
        return settings.redis_sentinel_tls
    return uses_tls(settings.redis_url)


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS arguments for ``settings.redis_url``; none unless :func:`speaks_tls`.

    Verification is always on (kombu's own default for ``rediss://`` is off).
    """
    if not speaks_tls(settings):
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
    options = tls_options(settings)
    if not options:
        return {}
    return {"broker_use_ssl": options, "redis_backend_use_ssl": options}


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """kombu's and Celery's transport options for a ``sentinel://`` URL (none otherwise)."""
    if not redis_sentinel.is_sentinel(settings.redis_url):
        return {}
    return redis_sentinel.transport_options(
        settings.redis_sentinel_master, _sentinel_password(settings), tls_options(settings)
    )


def _sentinel_password(settings: Settings) -> str | None:
    secret = settings.redis_sentinel_password
    return secret.get_secret_value() if secret is not None else None


def sync_client(
    settings: Settings, *, max_connections: int = 64, socket_timeout_s: float = 10.0
) -> redis.Redis:
    """A client on ``settings.redis_url`` (on its primary, for a ``sentinel://`` URL)."""
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES, supported_errors=_RETRY_ON)
    options = _pool_options(max_connections, socket_timeout_s, retry)
    if redis_sentinel.is_sentinel(settings.redis_url):
        return redis_sentinel.sync_client(*_sentinel_args(settings), **options)
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url, **options, **tls_options(settings)
    )
    return redis.Redis(connection_pool=pool)


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
    settings: Settings, *, max_connections: int = 512, socket_timeout_s: float = 10.0
) -> aioredis.Redis:
    """An asyncio client on ``settings.redis_url`` (on its primary, for ``sentinel://``)."""
    retry = AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES, supported_errors=_RETRY_ON)
    options = _pool_options(max_connections, socket_timeout_s, retry)
    if redis_sentinel.is_sentinel(settings.redis_url):
        return redis_sentinel.async_client(*_sentinel_args(settings), **options)
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url, **options, **tls_options(settings)
    )
    return aioredis.Redis(connection_pool=pool)
