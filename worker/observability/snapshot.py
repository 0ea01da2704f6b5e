"""The shared state of the service as Redis holds it now, read in one pipeline.

Queue depth (every queue the workers consume, every priority step), dead letters, unreadable
messages set aside (:mod:`worker.delivery.broker`), and for each
configured endpoint: its calls in flight against its cap and its circuit breaker (for a pool,
each replica's too). Read by the API's ``/metrics`` and by ``genqueue status``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from worker import keys
from worker.delivery import backlog
from worker.endpoints.config import Endpoints, replica_cap, total_cap
from worker.limits.auto_limit import AutoBounds, limit_of


@dataclass(frozen=True)
class EndpointCap:
    """An endpoint to report on: its id and its cap, fixed or the bounds of an "auto" one (a
    pool's: its replicas' together); or a pool's replica (``pool`` and ``replica`` set,
    ``endpoint_id`` its own)."""

    endpoint_id: str
    cap: int | AutoBounds
    pool: str | None = None
    replica: int | None = None

    @property
    def max_concurrency(self) -> int:
        """The fixed cap, or the upper bound of an "auto" one."""
        return self.cap if isinstance(self.cap, int) else self.cap.high


def endpoint_caps(endpoints: Endpoints | None) -> list[EndpointCap]:
    """The configured endpoints, the default first; none when no endpoint is configured."""
    if endpoints is None:
        return []
    names = [endpoints.default, *(n for n in endpoints.names if n != endpoints.default)]
    caps = []
    for name in names:
        spec = endpoints.get(name)
        replicas = len(spec.replica_urls) if spec.is_pool else 0
        caps.append(EndpointCap(name, total_cap(spec) if spec.is_pool else spec.cap))
        caps += [
            EndpointCap(keys.replica_id(name, i), replica_cap(spec, i), pool=name, replica=i)
            for i in range(replicas)
        ]
    return caps


def _endpoint_ids(caps: Sequence[EndpointCap]) -> list[str]:
    return [cap.endpoint_id for cap in caps if cap.pool is None]


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
    #: A pool's replica: the pool's name and the replica's index.
    pool: str | None = None
    replica: int | None = None


@dataclass(frozen=True)
class Snapshot:
    queue_depth: int
    dead_letters: int
    unreadable: int = 0
    endpoints: tuple[EndpointState, ...] = ()

    @classmethod
    def commands(cls, pipe: Any, caps: Sequence[EndpointCap]) -> None:
        """Queue the reads of a snapshot on ``pipe`` (a sync or an asyncio pipeline)."""
        lists = queue_keys(_endpoint_ids(caps))
        for name in lists:
            pipe.llen(name)
        pipe.execute_command(*backlog.size_command(lists))
        pipe.llen(keys.dead_letters())
        pipe.llen(keys.unreadable())
        pipe.time()
        now_ms = int(time.time() * 1000)
        for cap in caps:
            if cap.pool is None:
                pipe.zcount(keys.lease(cap.endpoint_id), now_ms, "+inf")
            else:  # a replica's calls: the pool's live leases assigned to it
                pipe.zrangebyscore(keys.lease(cap.pool), now_ms, "+inf")
                pipe.hgetall(keys.pool_assign(cap.pool))
            pipe.hmget(keys.breaker(cap.endpoint_id), "open_until", "failures")
            pipe.hget(keys.auto_limit(cap.endpoint_id), "limit")

    @classmethod
    def parse(cls, results: list[Any], caps: Sequence[EndpointCap]) -> Snapshot:
        """The snapshot from the results of :meth:`commands` with the same ``caps``."""
        queues = len(queue_keys(_endpoint_ids(caps)))
        depth = sum(int(n) for n in results[:queues]) + backlog.size_of(results[queues])
        queues += 1
        dead, unreadable = int(results[queues]), int(results[queues + 1])
        seconds, micros = results[queues + 2]
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        states = []
        at = queues + 3
        for cap in caps:
            if cap.pool is None:
                in_flight, at = int(results[at]), at + 1
            else:
                live, assign = set(results[at]), results[at + 1]
                replica = str(cap.replica).encode()
                in_flight = sum(1 for t, r in assign.items() if r == replica and t in live)
                at += 2
            (open_until_raw, failures), limit = results[at], results[at + 1]
            at += 2
            open_until = int(open_until_raw or 0)
            states.append(
                EndpointState(
                    endpoint_id=cap.endpoint_id,
                    max_concurrency=cap.max_concurrency,
                    in_flight=in_flight,
                    breaker_state=_breaker_state(open_until, now_ms),
                    breaker_failures=int(failures or 0),
                    breaker_retry_in_s=max(0.0, (open_until - now_ms) / 1000),
                    limit=limit_of(cap.cap, limit),
                    auto=not isinstance(cap.cap, int),
                    pool=cap.pool,
                    replica=cap.replica,
                )
            )
        return cls(
            queue_depth=depth,
            dead_letters=dead,
            unreadable=unreadable,
            endpoints=tuple(_pools_open_when_all_are(states)),
        )


def _breaker_state(open_until: int, now_ms: int) -> str:
    if open_until > now_ms:
        return "open"
    return "half_open" if open_until > 0 else "closed"


def _pools_open_when_all_are(states: list[EndpointState]) -> list[EndpointState]:
    """A pool's own breaker is the state of its replicas': open when every one is open,
    half-open when none is closed, else closed (the pool's own hash is never written)."""
    by_pool: dict[str, list[EndpointState]] = {}
    for state in states:
        if state.pool is not None:
            by_pool.setdefault(state.pool, []).append(state)
    merged = []
    for state in states:
        replicas = by_pool.get(state.endpoint_id)
        if replicas:
            kinds = {r.breaker_state for r in replicas}
            pool_state = "closed" if "closed" in kinds else "half_open"
            if kinds == {"open"}:
                pool_state = "open"
            retry_s = min(r.breaker_retry_in_s for r in replicas) if pool_state == "open" else 0.0
            state = replace(state, breaker_state=pool_state, breaker_retry_in_s=retry_s)
        merged.append(state)
    return merged
