"""``genqueue bench --scenario batching``: ``max_concurrency = "auto"`` against fixed caps.

The simulator plays a batching server (``genqueue simulate --batch-knee``): each call takes
``LATENCY_S`` up to ``KNEE`` calls at once, and slows by (running / knee) ** ``SLOWDOWN``
beyond, so throughput falls past the knee, which genqueue is not told. For each fixed cap of
``CAPS`` and for "auto", the same run: a backlog released to the worker, the tasks
finished a second and the endpoint call's p50 latency (the results' ``latency_ms``) over the
window after the first ``WARMUP_S`` (steady state: auto's climb from 1 is the "reached" time of
the knee-moves run, measured apart). Then "auto" alone
while the knee moves (8, then 4, then 16): the limit in force every half second, and how long
after each move it took to reach the new knee's neighbourhood.
"""

from __future__ import annotations

import json
import time
from typing import Any

from genqueue.bench.figures import percentile
from genqueue.bench.harness import Harness
from genqueue.bench.phases.drain import hold_queues, release_queues
from genqueue.bench.progress import progress
from genqueue.bench.simulator_process import SimProcess
from worker import keys
from worker.limits.auto_limit import AutoBounds, in_force

LATENCY_S = 0.3
KNEE = 8
SLOWDOWN = 1.5
CAPS = (1, 2, 4, 8, 16, 32, 64)
BOUNDS = AutoBounds(1, 64)
WARMUP_S = 8.0
#: The knee moves: (knee, seconds) in turn.
MOVES = ((KNEE, 20.0), (4, 25.0), (16, 30.0))
#: Enough greenlets in each worker process for the largest cap.
WORKER_ENV = {"GENQUEUE_WORKER_CONCURRENCY": "80"}


def run_batching(harness: Harness) -> dict[str, Any]:
    seconds = harness.cfg.batching_s
    figures: dict[str, Any] = {
        "latency_ms": LATENCY_S * 1000, "knee": KNEE, "slowdown": SLOWDOWN, "seconds": seconds,
        "warmup_s": WARMUP_S, "fixed": {},
    }  # fmt: skip
    with harness.simulator(LATENCY_S) as sim:
        sim.configure(batch_knee=KNEE, batch_slowdown=SLOWDOWN)
        for cap in CAPS:
            figures["fixed"][str(cap)] = found = _once(harness, sim, str(cap), seconds)
            progress(f"batching, cap {cap}: {found['per_s']:.2f} tasks/s, call p50 "
                     f"{found['call_p50_ms']} ms")  # fmt: skip
        figures["auto"] = found = _once(harness, sim, "auto", seconds)
        progress(f"batching, auto: {found['per_s']:.2f} tasks/s, call p50 "
                 f"{found['call_p50_ms']} ms, limit {found['limit_p50']}")  # fmt: skip
        best_cap, best = max(figures["fixed"].items(), key=lambda item: item[1]["per_s"])
        figures["best_fixed_cap"] = int(best_cap)
        figures["auto_throughput_ratio"] = round(found["per_s"] / best["per_s"], 3)
        if found["call_p50_ms"] and best["call_p50_ms"]:
            figures["auto_p50_ratio"] = round(found["call_p50_ms"] / best["call_p50_ms"], 3)
        moves = tuple((knee, span_s / 3) for knee, span_s in MOVES) if harness.cfg.quick else MOVES
        figures["moved"] = _moved(harness, sim, moves)
    harness.redis.flushdb()
    return figures


def _backlog(harness: Harness, seconds: float) -> tuple[list[str], list[bytes]]:
    """Enough tasks that the fastest cap does not run out of work in ``seconds``."""
    harness.redis.flushdb()
    count = int((seconds + WARMUP_S) * KNEE / LATENCY_S * 1.5) + 100
    task_ids = harness.genqueue.enqueue(count)
    return task_ids, hold_queues(harness, harness.genqueue, len(task_ids))


def _once(harness: Harness, sim: SimProcess, cap: str, seconds: float) -> dict[str, Any]:
    task_ids, queues = _backlog(harness, seconds)
    sim.configure(batch_knee=KNEE)
    sim.reset()
    env = WORKER_ENV | {"RUNPOD_MAX_CONCURRENCY": cap}
    worker = harness.start_worker(harness.genqueue, sim, env)
    limits: list[float] = []
    try:
        harness.watcher.begin(task_ids)
        started = time.monotonic()
        release_queues(harness, queues)
        while time.monotonic() - started < WARMUP_S + seconds:
            time.sleep(0.5)
            limits.append(_limit(harness))
        done = harness.watcher.done_at(task_ids)
    finally:
        harness.stop_worker(worker)
    end = started + WARMUP_S + seconds
    window = [t for t, at in done.items() if started + WARMUP_S < at <= end]
    latencies = _call_latencies_ms(harness, window)
    found: dict[str, Any] = {
        "per_s": round(len(window) / seconds, 3),
        "call_p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
        "simulator_max_in_flight": sim.stats()["max_in_flight"],
    }
    if cap == "auto":
        found["limit_p50"] = percentile(limits, 50) if limits else None
        found["limit_max"] = max(limits) if limits else None
    return found


def _moved(harness: Harness, sim: SimProcess, moves: tuple[tuple[int, float], ...]) -> Any:
    """Auto while the knee moves: the limit every half second, and each move's time to settle
    (first reaching knee - 1 ..  knee + 2)."""
    total_s = sum(s for _, s in moves)
    task_ids, queues = _backlog(harness, total_s * 2)  # at 16 the rate doubles
    sim.configure(batch_knee=moves[0][0])
    sim.reset()
    env = WORKER_ENV | {"RUNPOD_MAX_CONCURRENCY": "auto"}
    worker = harness.start_worker(harness.genqueue, sim, env)
    trace: list[tuple[float, int, int]] = []
    settled: list[dict[str, Any]] = []
    try:
        harness.watcher.begin(task_ids)
        started = time.monotonic()
        release_queues(harness, queues)
        for knee, span_s in moves:
            sim.configure(batch_knee=knee)
            moved_at = time.monotonic()
            reached: float | None = None
            while time.monotonic() - moved_at < span_s:
                time.sleep(0.5)
                limit = _limit(harness)
                trace.append((round(time.monotonic() - started, 1), knee, limit))
                if reached is None and knee - 1 <= limit <= knee + 2:
                    reached = time.monotonic() - moved_at
            last_half = [float(lim) for _, _, lim in trace[-int(span_s) :]]  # 2 a second
            settled.append({"knee": knee, "seconds": span_s,
                            "reached_after_s": None if reached is None else round(reached, 1),
                            "limit_p50_last_half": percentile(last_half, 50)})  # fmt: skip
            progress(f"batching, knee {knee}: limit reached its neighbourhood after "
                     f"{settled[-1]['reached_after_s']} s, p50 of the last half "
                     f"{settled[-1]['limit_p50_last_half']}")  # fmt: skip
    finally:
        harness.stop_worker(worker)
    return {"moves": settled, "trace": trace}


def _limit(harness: Harness) -> int:
    return in_force(harness.redis.hget(keys.auto_limit("default"), "limit"), BOUNDS)


def _call_latencies_ms(harness: Harness, task_ids: list[str]) -> list[float]:
    """The endpoint call's latency of each task, from its Celery result."""
    pipe = harness.redis.pipeline(transaction=False)
    for task_id in task_ids:
        pipe.get(keys.celery_result(task_id))
    latencies = []
    for raw in pipe.execute():
        if raw is None:
            continue
        result = json.loads(raw).get("result") or {}
        if isinstance(result, dict) and result.get("latency_ms") is not None:
            latencies.append(float(result["latency_ms"]))
    return latencies
