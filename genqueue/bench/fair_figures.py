"""The figures of ``genqueue bench --scenario fair-backlog``, from when each task was sent and
started: time to start, and each tenant's share of the calls (and tokens) made while every
tenant had work waiting. Pure: tested on their own (tests/unit/genqueue/bench/test_fair_figures.py).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from genqueue.bench.figures import percentile


@dataclass(frozen=True)
class Sent:
    """One task: its tenant, its burst (``-1``: the backlog), when it was sent and started
    (``None``: not started while watched), and what it costs in tokens (the estimate)."""

    tenant: str
    burst: int
    sent_s: float
    started_s: float | None
    tokens: int


def _quantiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50": None, "p99": None, "max": None}
    return {
        "p50": round(percentile(samples, 50), 3),
        "p99": round(percentile(samples, 99), 3),
        "max": round(max(samples), 3),
    }


def time_to_start(tasks: Iterable[Sent], tenant: str, watched_until_s: float) -> dict[str, Any]:
    """``tenant``'s time from sent to started, per task and for each burst's first task, in s
    (a task that never started counts as waiting until ``watched_until_s``: a lower bound)."""
    own = [t for t in tasks if t.tenant == tenant]
    waits = [(t.started_s if t.started_s is not None else watched_until_s) - t.sent_s for t in own]
    firsts: dict[int, float] = {}
    for task, wait in zip(own, waits, strict=True):
        firsts[task.burst] = min(firsts.get(task.burst, wait), wait)
    return {
        "tasks": len(own),
        "unstarted": sum(1 for t in own if t.started_s is None),
        "per_task_s": _quantiles(waits),
        "first_of_burst_s": _quantiles(list(firsts.values())),
    }


def contended_shares(
    tasks: Sequence[Sent], tenants: Sequence[str], from_first_start: bool = False
) -> dict[str, Any]:
    """Each tenant's share of the calls, and of their tokens, among the calls that started while
    every tenant of ``tenants`` had work waiting (a task sent and not started before, or
    starting then). With ``from_first_start``, a burst's tasks wait from when its first task
    started (the time a burst takes to reach the scheduler is left out)."""
    first: dict[tuple[str, int], float] = {}
    for task in tasks:
        if task.started_s is not None and task.burst >= 0:
            key = (task.tenant, task.burst)
            first[key] = min(first.get(key, task.started_s), task.started_s)
    waiting: dict[str, list[tuple[float, float]]] = {name: [] for name in tenants}
    for task in tasks:
        if task.tenant in waiting:
            end = task.started_s if task.started_s is not None else float("inf")
            begin = task.sent_s
            if from_first_start and task.burst >= 0:
                begin = max(begin, first.get((task.tenant, task.burst), float("inf")))
            waiting[task.tenant].append((begin, end))

    # Per tenant, by time sent: the latest start of the tasks sent so far (a prefix maximum),
    # so that "some task sent by then starts then or later" is one bisection.
    sent_at: dict[str, list[float]] = {}
    latest: dict[str, list[float]] = {}
    for name, spans in waiting.items():
        spans.sort()
        sent_at[name] = [sent for sent, _ in spans]
        latest[name] = list(itertools.accumulate((end for _, end in spans), max))

    def has_work(name: str, at: float) -> bool:
        index = bisect.bisect_right(sent_at[name], at) - 1
        return index >= 0 and latest[name][index] >= at

    calls = {name: 0 for name in tenants}
    tokens = {name: 0 for name in tenants}
    for task in tasks:
        at = task.started_s
        if at is None or task.tenant not in calls:
            continue
        if all(has_work(name, at) for name in tenants):
            calls[task.tenant] += 1
            tokens[task.tenant] += task.tokens
    total_calls, total_tokens = sum(calls.values()), sum(tokens.values())
    return {
        "calls_counted": total_calls,
        "call_shares": {n: round(c / total_calls, 3) if total_calls else None
                        for n, c in calls.items()},
        "token_shares": {n: round(t / total_tokens, 3) if total_tokens else None
                         for n, t in tokens.items()},
    }  # fmt: skip
