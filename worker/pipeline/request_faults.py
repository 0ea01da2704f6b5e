"""Failures that follow one request, told apart from an endpoint that is down for everyone.

A retryable failure is the request's own fault when

- it repeats on every attempt of the task (the same 500, or the connection dropped each time)
  while the endpoint served other tasks in between (the breaker hash counts successes in its
  ``served`` field): the task fails ``endpoint_rejected``; or
- the server dropped the connection and stopped listening (it crashed) right after the request
  was sent, while it was the only call in flight there: a second such crash fails the task
  ``poison`` (dead-lettered, not sent again). A crash with several calls in flight cannot be
  pinned on one of them; it counts as an ordinary failure, so the breaker opens and its
  probes, one call at a time, find the request that crashes the server.

Either way the failure stays out of the circuit breaker's count: the breaker exists for an
endpoint that is down for everyone, not for one bad request.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis

from worker import keys
from worker.errors import (
    ConnectionDropped,
    GenQueueError,
    PermanentEndpointError,
    PoisonTask,
    RetryableEndpointError,
)
from worker.redis_io.redis_outage import OutagePolicy, ride_out

log = logging.getLogger(__name__)

#: Statuses that a bad request can cause on every attempt (429, 503 and timeouts come and go).
REPEATABLE_STATUSES = frozenset({500})
#: Crashes right after the request was sent before the task is given up as poison.
CRASHES_MAX = 2
#: How long the check that the server still listens waits for a connection.
LISTEN_CHECK_TIMEOUT_S = 1.0
#: A crashing server may still accept for a moment while its process is torn down: the check
#: tries this many times, this far apart.
LISTEN_CHECKS = 5
LISTEN_CHECK_INTERVAL_S = 0.1


@dataclass(frozen=True)
class Verdict:
    """What a retryable failure says about its request."""

    #: The final error when the failure is the request's fault.
    fault: GenQueueError | None = None
    #: The failure followed the request (a crash): keep it out of the breaker's count.
    request_caused: bool = False


def _signature(err: RetryableEndpointError) -> str | None:
    if isinstance(err, ConnectionDropped):
        return "dropped"
    if err.status_code in REPEATABLE_STATUSES:
        return str(err.status_code)
    return None


def stopped_listening(base_url: str, timeout_s: float = LISTEN_CHECK_TIMEOUT_S) -> bool:
    """Whether nothing accepts connections at ``base_url``'s host and port any more (within
    half a second of the question)."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for check in range(LISTEN_CHECKS):
        if check:
            time.sleep(LISTEN_CHECK_INTERVAL_S)
        try:
            with socket.create_connection((parts.hostname or "", port), timeout=timeout_s):
                continue
        except ConnectionRefusedError:
            return True
        except OSError:
            return False  # a timeout or an unreachable network says nothing of the request
    return False


# The calls in flight when the endpoint dropped a connection, fixed by the first call to report
# the drop: the calls dropped at the same moment (they all still hold their slots then) get the
# same answer. KEYS: lease, dropped. ARGV: how long the answer is kept, ms.
_IN_FLIGHT_AT_DROP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local count = redis.call('ZCOUNT', KEYS[1], now, '+inf')
redis.call('SET', KEYS[2], count, 'NX', 'PX', ARGV[1])
return tonumber(redis.call('GET', KEYS[2]))
"""
#: How long the calls dropped at one moment share the count of calls in flight.
DROP_WINDOW_MS = 500


class RequestFaults:
    """Judges each retryable failure of a task; state in the task's record, one hash.

    :param outage: how long a judgement's round trips ride out an unreachable Redis (as the
        task's start and end do; :class:`RedisOutage` past it).
    """

    def __init__(self, redis_client: redis.Redis, outage: OutagePolicy | None = None) -> None:
        self._redis = redis_client
        self._outage = outage or OutagePolicy()
        self._in_flight_at_drop = redis_client.register_script(_IN_FLIGHT_AT_DROP)

    def _dropped_alone(self, endpoint: str) -> bool:
        """This dropped call was the only one in flight to the endpoint."""
        in_flight = self._in_flight_at_drop(
            keys=[keys.lease(endpoint), keys.dropped(endpoint)], args=[DROP_WINDOW_MS]
        )
        return int(in_flight or 0) <= 1

    def judge(
        self,
        task_id: str,
        endpoint: str,
        base_url: str,
        err: RetryableEndpointError,
        served_by: Sequence[str] = (),
    ) -> Verdict:
        """Whether ``err``, a retryable failure of ``task_id`` on ``endpoint`` (at ``base_url``:
        a pool's replica's), is the fault of the task's request; ``served_by`` names the
        breakers that count the endpoint's successes (a pool's replicas'; default its own)."""
        served = list(served_by) or [endpoint]
        return ride_out(
            lambda: self._judge(task_id, endpoint, base_url, err, served),
            "judging its failure",
            self._outage,
        )

    def _judge(
        self,
        task_id: str,
        endpoint: str,
        base_url: str,
        err: RetryableEndpointError,
        served_by: list[str],
    ) -> Verdict:
        if isinstance(err, ConnectionDropped):
            if not self._dropped_alone(endpoint):
                return Verdict()  # several calls dropped at once: none can be blamed
            if stopped_listening(base_url):
                return self._crashed(task_id, endpoint)
        return self._repeated(task_id, endpoint, err, served_by)

    def _crashed(self, task_id: str, endpoint: str) -> Verdict:
        record = keys.task_record(task_id)
        crashes = int(self._redis.hincrby(record, f"crashes:{endpoint}", 1))
        log.warning(
            "task %s: endpoint %s stopped listening right after the request (%d time(s))",
            task_id, endpoint, crashes,
        )  # fmt: skip
        if crashes >= CRASHES_MAX:
            return Verdict(
                PoisonTask(
                    f"endpoint {endpoint!r} crashed (dropped the connection and stopped "
                    f"listening) each of the {crashes} times this request was sent; not "
                    "sent again, moved to the dead-letter list"
                ),
                request_caused=True,
            )
        return Verdict(request_caused=True)

    def _repeated(
        self, task_id: str, endpoint: str, err: RetryableEndpointError, served_by: list[str]
    ) -> Verdict:
        signature = _signature(err)
        if signature is None:
            return Verdict()
        record = keys.task_record(task_id)
        field = f"fault:{endpoint}"
        with self._redis.pipeline(transaction=False) as pipe:
            for health in served_by:
                pipe.hget(keys.breaker(health), "served")
            pipe.hget(record, field)
            *served_raw, previous = pipe.execute()
        served = sum(int(raw or 0) for raw in served_raw)
        self._redis.hset(record, field, f"{signature}:{served}")
        if previous is None:
            return Verdict()
        text = previous.decode() if isinstance(previous, bytes) else str(previous)
        previous_signature, _, previous_served = text.rpartition(":")
        if previous_signature != signature or served <= int(previous_served or 0):
            return Verdict()
        return Verdict(
            PermanentEndpointError(
                f"endpoint {endpoint!r} failed this request the same way on every attempt "
                f"while it served other tasks: {err.message}",
                status_code=err.status_code,
            ),
            request_caused=True,
        )
