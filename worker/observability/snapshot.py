"""The shared state of the service as Redis holds it now, read in one pipeline.

Queue depth (every queue the workers consume, every priority step), dead letters, unreadable
messages set aside (:mod:`worker.delivery.broker`), and for each
configured endpoint: its calls in flight against its cap and its circuit breaker. Read by the
API's ``/metrics`` and by ``genqueue status``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from worker import keys
from worker.delivery import backlog
from worker.endpoints.config import Endpoints
from worker.limits.auto_limit import AutoBounds, limit_of


@dataclass(frozen=True)
class EndpointCap:
    """An endpoint to report on: its id and its cap, fixed or the bounds of an "auto" one."""

    endpoint_id: str
    cap: int | AutoBounds

    @property
    def max_concurrency(self) -> int:
        """The fixed cap, or the upper bound of an "auto" one."""
        return self.cap if isinstance(self.cap, int) else self.cap.high


def endpoint_caps(endpoints: Endpoints | None) -> list[EndpointCap]:
    """The configured endpoints, the default first; none when no endpoint is configured."""
    if endpoints is None:
        return []
    names = [endpoints.default, *(n for n in endpoints.names if n != endpoints.default)]
    return [EndpointCap(name, endpoints.get(name).cap) for name in names]


def queue_keys(endpoint_ids: Sequence[str] = ()) -> list[str]:
    """Every Redis list the workers consume: genqueue's and Celery's default queues and each
    endpoint's queue, each priority step."""
    return keys.queue_lists(keys.all_queues(endpoint_ids))


@dataclass(frozen=True)
class EndpointState:
    endpoint_id: str
    max_concurrency: int  # the fixed cap, or the upper bound of an "auto" one
    in_flight: int
    breaker_state: str  # closed, open, half_open
    breaker_failures: int = 0
    breaker_retry_in_s: float = 0.0
    #: The limit in force: the fixed cap, or the one an "auto" limit's controller found.
    limit: int = 0
    auto: bool = False


@dataclass(frozen=True)
class Snapshot:
    queue_depth: int
    dead_letters: int
    unreadable: int = 0
    endpoints: tuple[EndpointState, ...] = ()

    @classmethod
    def commands(cls, pipe: Any, caps: Sequence[EndpointCap]) -> None:
        """Queue the reads of a snapshot on ``pipe`` (a sync or an asyncio pipeline)."""
        lists = queue_keys([cap.endpoint_id for cap in caps])
        for name in lists:
            pipe.llen(name)
        pipe.execute_command(*backlog.size_command(lists))
        pipe.llen(keys.dead_letters())
        pipe.llen(keys.unreadable())
        pipe.time()
        now_ms = int(time.time() * 1000)
        for cap in caps:
            pipe.zcount(keys.lease(cap.endpoint_id), now_ms, "+inf")
            pipe.hmget(keys.breaker(cap.endpoint_id), "open_until", "failures")
            pipe.hget(keys.auto_limit(cap.endpoint_id), "limit")

    @classmethod
    def parse(cls, results: list[Any], caps: Sequence[EndpointCap]) -> Snapshot:
        """The snapshot from the results of :meth:`commands` with the same ``caps``."""
        queues = len(queue_keys([cap.endpoint_id for cap in caps]))
        depth = sum(int(n) for n in results[:queues]) + backlog.size_of(results[queues])
        queues += 1
        dead, unreadable = int(results[queues]), int(results[queues + 1])
        seconds, micros = results[queues + 2]
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        states = []
        for index, cap in enumerate(caps):
            in_flight, (open_until_raw, failures), limit = results[
                queues + 3 + 3 * index : queues + 6 + 3 * index
            ]
            open_until = int(open_until_raw or 0)
            state = "closed"
            if open_until > now_ms:
                state = "open"
            elif open_until > 0:
                state = "half_open"
            states.append(
                EndpointState(
                    endpoint_id=cap.endpoint_id,
                    max_concurrency=cap.max_concurrency,
                    in_flight=int(in_flight),
                    breaker_state=state,
                    breaker_failures=int(failures or 0),
                    breaker_retry_in_s=max(0.0, (open_until - now_ms) / 1000),
                    limit=limit_of(cap.cap, limit),
                    auto=not isinstance(cap.cap, int),
                )
            )
        return cls(
            queue_depth=depth, dead_letters=dead, unreadable=unreadable, endpoints=tuple(states)
        )
