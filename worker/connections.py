"""Redis clients, made one way everywhere: bounded waits, and a retry across a reconnect.

A Redis restart breaks every pooled connection; the retry reconnects and runs the command again,
so a caller sees an error only when Redis stays away. Pools block for a free connection rather
than fail past their size (redis-py caps a plain pool at 100 and raises beyond it).
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

RETRIES = 3
CONNECT_TIMEOUT_S = 1.0
_RETRY_ON = (RedisConnectionError, RedisTimeoutError)


def sync_client(
    url: str, *, max_connections: int = 64, socket_timeout_s: float = 10.0
) -> redis.Redis:
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=socket_timeout_s,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES, supported_errors=_RETRY_ON),
    )
    return redis.Redis(connection_pool=pool)


def async_client(
    url: str, *, max_connections: int = 512, socket_timeout_s: float = 10.0
) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=socket_timeout_s,
        health_check_interval=10,
        retry=AsyncRetry(
            ExponentialBackoff(cap=0.5, base=0.05), RETRIES, supported_errors=_RETRY_ON
        ),
    )
    return aioredis.Redis(connection_pool=pool)
