"""A concurrency cap shared by every worker: leases on in-flight endpoint calls, in Redis.

Each call holds a token in a sorted set scored by its expiry (Redis server time, so clocks of
different machines do not matter). A background heartbeat pushes the expiry of the tokens this
process holds, so a token of a killed worker lapses after ``ttl_s`` and frees its slot.

Waiting is cheap: a local semaphore lets at most ``limit`` callers of this process contend
for Redis, and those poll with a jittered backoff capped at ``poll_max_s``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator

import redis

log = logging.getLogger(__name__)

_ACQUIRE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
"""

_RENEW = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for i = 1, #ARGV - 1 do
  redis.call('ZADD', KEYS[1], 'XX', now_ms + tonumber(ARGV[#ARGV]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[#ARGV]) * 2)
return 1
"""


class ConcurrencyLease:
    """At most ``limit`` holders at once across all processes sharing ``key``.

    :param client: the Redis client.
    :param key: the sorted set (see :func:`worker.keys.lease`).
    :param limit: the cap (``RUNPOD_MAX_CONCURRENCY``).
    :param ttl_s: how long a token outlives a holder that stopped renewing it.
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        limit: int,
        ttl_s: float = 30.0,
        poll_max_s: float = 0.25,
    ) -> None:
        self._client = client
        self._key = key
        self._limit = limit
        self._ttl_ms = int(ttl_s * 1000)
        self._poll_max_s = poll_max_s
        self._local = threading.BoundedSemaphore(limit)
        self._held: set[str] = set()
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._heartbeat: threading.Thread | None = None
        self._stopped = threading.Event()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Wait for a slot, hold it for the ``with`` body, give it back."""
        with self._local:
            token = self._wait_for_slot()
            try:
                yield
            finally:
                self._held.discard(token)
                self._release(token)

    def _wait_for_slot(self) -> str:
        token = uuid.uuid4().hex
        delay_s = 0.005
        while not self._acquire(keys=[self._key], args=[self._limit, self._ttl_ms, token]):
            time.sleep(random.uniform(delay_s / 2, delay_s))
            delay_s = min(delay_s * 2, self._poll_max_s)
        self._held.add(token)
        self._ensure_heartbeat()
        return token

    def _release(self, token: str) -> None:
        try:
            self._client.zrem(self._key, token)
        except redis.RedisError:
            # The token lapses by itself after ttl_s; nothing is lost.
            log.warning("could not release a concurrency lease; it expires by itself")

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is None or not self._heartbeat.is_alive():
            self._heartbeat = threading.Thread(
                target=self._renew_forever, name="genqueue-lease-heartbeat", daemon=True
            )
            self._heartbeat.start()

    def _renew_forever(self) -> None:
        interval_s = self._ttl_ms / 3000
        while not self._stopped.wait(interval_s):
            held = list(self._held)
            if not held:
                continue
            try:
                self._renew(keys=[self._key], args=[*held, self._ttl_ms])
            except redis.RedisError:
                log.warning("could not renew %d concurrency leases", len(held))

    def in_flight(self) -> int:
        """Holders right now, across all processes (expired tokens excluded)."""
        now_ms = int(time.time() * 1000)
        return int(self._client.zcount(self._key, now_ms, "+inf"))

    def close(self) -> None:
        self._stopped.set()
