"""Redis clients, made one way everywhere: bounded waits, and a retry across a reconnect.

A Redis restart breaks every pooled connection; the retry reconnects and runs the command again,
so a caller sees an error only when Redis stays away. Pools block for a free connection rather
than fail past their size (redis-py caps a plain pool at 100 and raises beyond it).

With a ``rediss://`` URL every client speaks TLS and verifies the server: its certificate must
chain to ``GENQUEUE_REDIS_CA_FILE`` (or the system's CAs) and name the host of the URL.
:func:`tls_options` is the one place that says how; Celery's broker and result backend get the
same options (:mod:`worker.celery_app`).
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

from worker.settings import Settings

RETRIES = 3
CONNECT_TIMEOUT_S = 1.0
_RETRY_ON = (RedisConnectionError, RedisTimeoutError)


def uses_tls(url: str) -> bool:
    return url.startswith("rediss://")


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS arguments for ``settings.redis_url``; none unless it is ``rediss://``.

    Verification is always on (kombu's own default for ``rediss://`` is off).
    """
    if not uses_tls(settings.redis_url):
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


def sync_client(
    settings: Settings, *, max_connections: int = 64, socket_timeout_s: float = 10.0
) -> redis.Redis:
    """A client on ``settings.redis_url``."""
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections,
        timeout=30,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=socket_timeout_s,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES, supported_errors=_RETRY_ON),
        **tls_options(settings),
    )
    return redis.Redis(connection_pool=pool)


def async_client(
    settings: Settings, *, max_connections: int = 512, socket_timeout_s: float = 10.0
) -> aioredis.Redis:
    """An asyncio client on ``settings.redis_url``."""
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections,
        timeout=30,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=socket_timeout_s,
        health_check_interval=10,
        retry=AsyncRetry(
            ExponentialBackoff(cap=0.5, base=0.05), RETRIES, supported_errors=_RETRY_ON
        ),
        **tls_options(settings),
    )
    return aioredis.Redis(connection_pool=pool)
