"""Riding out a Redis outage: one policy for every Redis round trip of a task.

A task's round trips (its start, its endpoint slot and running claim, its end, a retry's
scheduling) go through :func:`ride_out`: a connection failure is retried with a capped
exponential backoff (:func:`outage_delay_s`) until ``GENQUEUE_REDIS_OUTAGE_S`` has passed since
the first failure, then :class:`RedisOutage` is raised. The task keeps what it holds (a finished
result above all) meanwhile and never calls the endpoint again for it.

A worker that saw Redis away also holds back its sweep for abandoned messages for a while
(:func:`recently_down`): the messages of live workers look abandoned right after an outage,
since nobody could renew them, until their holders' heartbeats renew them again.

Sleeping is ``time.sleep``, which the worker process's gevent monkey patching (see
:mod:`worker.process`) turns into a greenlet switch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis

from worker.settings import Settings, default_of

log = logging.getLogger("genqueue.outage")

T = TypeVar("T")

#: What an unreachable Redis raises (``BusyLoadingError``, a Redis still loading its AOF after a
#: restart, is a ``ConnectionError``).
REDIS_DOWN: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)


@dataclass(frozen=True)
class OutagePolicy:
    """How long a round trip rides out an unreachable Redis, and how often it asks again."""

    budget_s: float = default_of("redis_outage_s")
    first_delay_s: float = 0.2
    max_delay_s: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> OutagePolicy:
        return cls(budget_s=settings.redis_outage_s)


class RedisOutage(Exception):
    """Redis stayed unreachable for longer than the outage budget."""


def outage_delay_s(failures: int, policy: OutagePolicy) -> float:
    """The wait after the ``failures``-th failure in a row (1-based): doubling from
    ``first_delay_s``, at most ``max_delay_s``."""
    exponent = min(max(failures - 1, 0), 30)
    return float(min(policy.max_delay_s, policy.first_delay_s * 2**exponent))


_last_failure_at = float("-inf")


def note_failure() -> None:
    """Remember that Redis was unreachable just now (see :func:`recently_down`)."""
    global _last_failure_at
    _last_failure_at = time.monotonic()


def recently_down(within_s: float) -> bool:
    """Whether this process found Redis unreachable in the last ``within_s`` seconds."""
    return time.monotonic() - _last_failure_at < within_s


def ride_out(
    call: Callable[[], T],
    what: str,
    policy: OutagePolicy,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] | None = None,
) -> T:
    """``call()``, asked again while Redis is unreachable, for up to ``policy.budget_s``.

    :param what: names the round trip in the log lines and in the :class:`RedisOutage`.
    :raises RedisOutage: Redis was still unreachable when the budget was spent.
    """
    failures = 0
    first_failure_at = 0.0
    while True:
        try:
            answer = call()
        except REDIS_DOWN as err:
            note_failure()
            now = clock()
            if failures == 0:
                first_failure_at = now
                log.warning(
                    "Redis is unreachable (%s): %s; retrying for up to %gs",
                    what, err, policy.budget_s,
                )  # fmt: skip
            spent_s = now - first_failure_at
            if spent_s >= policy.budget_s:
                raise RedisOutage(
                    f"Redis is unreachable for more than {policy.budget_s:g}s; gave up {what}"
                ) from err
            failures += 1
            delay_s = min(outage_delay_s(failures, policy), policy.budget_s - spent_s)
            (sleep or time.sleep)(delay_s)
            continue
        if failures:
            log.info("Redis is back after %.1fs (%s)", clock() - first_failure_at, what)
        return answer
