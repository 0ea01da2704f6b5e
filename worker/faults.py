"""Failures that follow one request, told apart from an endpoint that is down for everyone.

A retryable failure is the request's own fault when

- it repeats on every attempt of the task (the same 500, or the connection dropped each time)
  while the endpoint served other tasks in between (the breaker hash counts successes in its
  ``served`` field): the task fails ``endpoint_rejected``; or
- the server dropped the connection and stopped listening (it crashed) right after the request
  was sent: a second such crash fails the task ``poison`` (dead-lettered, not sent again).

Either way the failure stays out of the circuit breaker's count: the breaker exists for an
endpoint that is down for everyone, not for one bad request.
"""

from __future__ import annotations

import logging
import socket
import time
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


class RequestFaults:
    """Judges each retryable failure of a task; state in the task's record, one hash."""

    def __init__(self, redis_client: redis.Redis) -> None:
        self._redis = redis_client

    def judge(
        self, task_id: str, endpoint: str, base_url: str, err: RetryableEndpointError
    ) -> Verdict:
        record = keys.task_record(task_id)
        if isinstance(err, ConnectionDropped) and stopped_listening(base_url):
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
        signature = _signature(err)
        if signature is None:
            return Verdict()
        field = f"fault:{endpoint}"
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.breaker(endpoint), "served")
            pipe.hget(record, field)
            served_raw, previous = pipe.execute()
        served = int(served_raw or 0)
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
