"""What an autoscaler needs, per endpoint, read from Redis in two pipelines.

- ``queue_depth``: tasks for the endpoint not yet at a slot: queued in its Celery queue (and, for
  the default endpoint, in the general queues), waiting in its admission queue for a slot, and
  waiting at its pod's gate for the pod to come up.
- ``oldest_queued_age_s``: how long the oldest of them has waited (a queued message dated by its
  task's record, a waiter by when it joined), 0 when none waits.
- ``in_flight`` against ``max_concurrency``: the limit in force (for ``"auto"``, the one its
  controller found, :mod:`worker.limits.auto_limit`).
- ``since_last_call_s``: since the last call to the endpoint ended, ``None`` before the first
  (:mod:`worker.observability.call_clock`).
- the pod's ``running_s`` and ``idle_s`` (seconds it ran, and of them those with nothing in
  flight or waiting) and its ``pod_state``, for an endpoint with a ``runpod_pod_id``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from worker import keys
from worker.delivery.records import F_CREATED
from worker.endpoints.config import Endpoints, total_cap
from worker.endpoints.pods.gate import LOCK_TTL_S
from worker.limits.auto_limit import limit_of


@dataclass(frozen=True)
class EndpointSignals:
    endpoint: str
    queue_depth: int
    oldest_queued_age_s: float
    in_flight: int
    max_concurrency: int  # the limit in force
    since_last_call_s: float | None
    pod_state: str | None = None
    pod_running_s: float = 0.0
    pod_idle_s: float = 0.0
    usd_per_hour: float | None = None
    auto: bool = False  # max_concurrency = "auto"

    @property
    def pod_cost_usd(self) -> float | None:
        """What the pod's running time cost, at ``usd_per_hour``."""
        if self.usd_per_hour is None:
            return None
        return round(self.pod_running_s / 3600 * self.usd_per_hour, 4)


def queues_of(endpoints: Endpoints, name: str) -> list[str]:
    """The Celery queues whose tasks go to ``name``."""
    general = list(keys.GENERAL_QUEUES) if name == endpoints.default else []
    return [*general, keys.queue_for(name)]


class SignalsRead:
    """One read of every endpoint's signals: :meth:`commands` on a pipeline, :meth:`dated`
    with its results (the queued tasks to date), :meth:`date_commands` on a second pipeline,
    :meth:`signals` with its results. Sync and asyncio pipelines alike (see
    :func:`read_signals`)."""

    def __init__(self, endpoints: Endpoints | None) -> None:
        self._endpoints = endpoints
        self.names = [] if endpoints is None else [
            endpoints.default, *(n for n in endpoints.names if n != endpoints.default)
        ]  # fmt: skip
        self._now_ms = int(time.time() * 1000)
        self._lists = {
            name: keys.queue_lists(queues_of(endpoints, name))
            for name in self.names
            if endpoints is not None
        }
        self._partial: list[tuple[Any, ...]] = []
        self._ids: list[str] = []

    def commands(self, pipe: Any) -> None:
        for name in self.names:
            assert self._endpoints is not None
            # A task at the gate longer than the longest wait counts no more (its worker died).
            wait_max_s = self._endpoints.get(name).pod_ready_timeout_s + LOCK_TTL_S
            since_ms = self._now_ms - int(wait_max_s * 1000)
            for key in self._lists[name]:
                pipe.llen(key)
                pipe.lindex(key, -1)  # kombu pops from the right: the oldest message
            pipe.zcard(keys.admission(name))
            pipe.zrange(keys.admission_age(name), 0, 0, withscores=True)
            pipe.zcount(keys.pod_waiters(name), since_ms, "+inf")
            pipe.zrangebyscore(keys.pod_waiters(name), since_ms, "+inf", 0, 1, True)
            pipe.zcount(keys.lease(name), self._now_ms, "+inf")
            pipe.zscore(keys.last_calls(), name)
            pipe.hgetall(keys.pod(name))
            pipe.hget(keys.auto_limit(name), "limit")

    def dated(self, results: list[Any]) -> list[str]:
        """The ids of the oldest queued tasks, whose records date them."""
        answers = iter(results)
        for name in self.names:
            depth, ids = 0, []
            for _ in self._lists[name]:
                depth += int(next(answers))
                task_id = _task_id(next(answers))
                if task_id is not None:
                    ids.append(task_id)
            admitting, admit_oldest = int(next(answers)), next(answers)
            at_gate, gate_oldest = int(next(answers)), next(answers)
            in_flight, last_call, pod = int(next(answers)), next(answers), next(answers)
            limit = next(answers)
            joined = [int(score) for _, score in [*admit_oldest, *gate_oldest]]
            self._partial.append(
                (name, depth + admitting + at_gate, ids, joined, in_flight, last_call, pod, limit)
            )
            self._ids += ids
        return self._ids

    def date_commands(self, pipe: Any) -> None:
        for task_id in self._ids:
            pipe.hget(keys.task_record(task_id), F_CREATED)

    def signals(self, results: list[Any]) -> list[EndpointSignals]:
        created = _created_ms(self._ids, results)
        signals = []
        for name, depth, ids, joined, in_flight, last_call, pod, limit in self._partial:
            assert self._endpoints is not None
            spec = self._endpoints.get(name)
            dates = [*joined, *(created[i] for i in ids if i in created)]
            fields = {_text(k): _text(v) for k, v in pod.items()}
            since_s = None if last_call is None else (self._now_ms - float(last_call)) / 1000
            signals.append(
                EndpointSignals(
                    endpoint=name,
                    queue_depth=depth,
                    oldest_queued_age_s=max(0.0, (self._now_ms - min(dates)) / 1000)
                    if dates
                    else 0.0,
                    in_flight=in_flight,
                    max_concurrency=total_cap(spec) if spec.is_pool else limit_of(spec.cap, limit),
                    auto=not isinstance(spec.cap, int),
                    since_last_call_s=None if since_s is None else max(0.0, since_s),
                    pod_state=(fields.get("state") or "unknown") if spec.runpod_pod_id else None,
                    pod_running_s=float(fields.get("running_s") or 0),
                    pod_idle_s=float(fields.get("idle_s") or 0),
                    usd_per_hour=spec.usd_per_hour,
                )
            )
        return signals


def read_signals(client: redis.Redis, endpoints: Endpoints | None) -> list[EndpointSignals]:
    """Each configured endpoint's signals, the default first."""
    read = SignalsRead(endpoints)
    pipe = client.pipeline(transaction=False)
    read.commands(pipe)
    read.dated(pipe.execute())
    pipe = client.pipeline(transaction=False)
    read.date_commands(pipe)
    return read.signals(pipe.execute() if read.names else [])


def _task_id(raw: Any) -> str | None:
    """The task id of a kombu message as the queue list holds it (``None``: unreadable)."""
    if raw is None:
        return None
    try:
        task_id = json.loads(raw)["headers"]["id"]
    except (ValueError, KeyError, TypeError):
        return None
    return task_id if isinstance(task_id, str) else None


def _created_ms(task_ids: Sequence[str], answers: Sequence[Any]) -> dict[str, int]:
    """When each task was created, from its record (tasks without a record left out)."""
    created = {}
    for task_id, raw in zip(task_ids, answers, strict=True):
        if raw is None:
            continue
        try:
            created[task_id] = int(datetime.fromisoformat(_text(raw)).timestamp() * 1000)
        except ValueError:
            continue
    return created


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def scaling_families(signals: Sequence[EndpointSignals]) -> list[Metric]:
    """The signals as Prometheus gauges, one series per endpoint (the pod's for those with one)."""
    families = {
        name: GaugeMetricFamily(name, doc, labels=["endpoint"])
        for name, doc in (
            ("genqueue_endpoint_queue_depth",
             "Tasks for the endpoint not yet at a slot: queued, waiting for a slot or its pod."),
            ("genqueue_endpoint_oldest_queued_age_seconds",
             "How long the oldest task waiting for the endpoint has waited (0: none waits)."),
            ("genqueue_endpoint_in_flight_ratio",
             "Calls in flight over the endpoint's limit in force (max_concurrency, or auto's)."),
            ("genqueue_endpoint_seconds_since_last_call",
             "Since the endpoint's last call ended (no series before the first)."),
            ("genqueue_pod_ready", "1 when the endpoint's pod is up and its model loaded."),
            ("genqueue_pod_running_seconds", "Seconds the endpoint's pod ran, as genqueue saw."),
            ("genqueue_pod_idle_seconds",
             "Of them, the seconds with nothing in flight or waiting."),
        )
    }  # fmt: skip
    for signal in signals:
        name = [signal.endpoint]
        families["genqueue_endpoint_queue_depth"].add_metric(name, signal.queue_depth)
        families["genqueue_endpoint_oldest_queued_age_seconds"].add_metric(
            name, signal.oldest_queued_age_s
        )
        families["genqueue_endpoint_in_flight_ratio"].add_metric(
            name, signal.in_flight / signal.max_concurrency
        )
        if signal.since_last_call_s is not None:
            families["genqueue_endpoint_seconds_since_last_call"].add_metric(
                name, signal.since_last_call_s
            )
        if signal.pod_state is not None or signal.pod_running_s:
            families["genqueue_pod_ready"].add_metric(name, float(signal.pod_state == "ready"))
            families["genqueue_pod_running_seconds"].add_metric(name, signal.pod_running_s)
            families["genqueue_pod_idle_seconds"].add_metric(name, signal.pod_idle_s)
    return list(families.values())
