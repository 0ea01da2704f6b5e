"""The drain phases: a backlog released to a started worker, timed until its last result."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from genqueue.bench.config import BenchError
from genqueue.bench.figures import littles_limit, ratio, steady_rate, summarize
from genqueue.bench.harness import Harness
from genqueue.bench.processes import tree_cpu_s, tree_peak_rss_mb
from genqueue.bench.progress import progress
from genqueue.bench.redis_db import RedisUsage, redis_per_task, redis_usage
from genqueue.bench.simulator_process import SimProcess
from genqueue.bench.workers import Kind
from worker import keys


def hold_queues(harness: Harness, kind: Kind, count: int) -> list[bytes]:
    """Move the backlog aside (RENAME), so the worker starts idle; check it is all there."""
    queues = [k for k in harness.redis.scan_iter(count=1000) if harness.redis.type(k) == b"list"]
    total = sum(int(harness.redis.llen(q)) for q in queues)
    stray = [q for q in queues if not q.startswith(kind.queue.encode())]
    if total != count or stray:
        raise BenchError(f"{total} of {count} messages in queues {queues!r}")
    pipe = harness.redis.pipeline(transaction=True)
    for queue in queues:
        pipe.rename(queue, keys.bench_held(queue))
    pipe.execute()
    return queues


def release_queues(harness: Harness, queues: list[bytes]) -> None:
    pipe = harness.redis.pipeline(transaction=True)
    for queue in queues:
        pipe.rename(keys.bench_held(queue), queue)
    pipe.execute()


def _count_results(harness: Harness, task_ids: list[str]) -> tuple[int, int]:
    succeeded = failed = 0
    for start in range(0, len(task_ids), 500):
        result_keys = [keys.celery_result(t) for t in task_ids[start : start + 500]]
        for raw in harness.redis.mget(result_keys):
            state = json.loads(raw).get("status") if raw else None
            succeeded += state == "SUCCESS"
            failed += state in ("FAILURE", "REVOKED")
    return succeeded, failed


def drain_once(harness: Harness, kind: Kind, sim: SimProcess) -> dict[str, Any]:
    harness.redis.flushdb()
    enqueue0 = redis_usage(harness.redis)
    task_ids = kind.enqueue(harness.cfg.tasks)
    enqueued = (enqueue0, redis_usage(harness.redis))
    queues = hold_queues(harness, kind, harness.cfg.tasks)
    sim.reset()
    worker = harness.start_worker(kind, sim)
    try:
        return _measure_drain(harness, sim, worker, task_ids, queues, enqueued)
    finally:
        harness.stop_worker(worker)


def _measure_drain(
    harness: Harness,
    sim: SimProcess,
    worker: subprocess.Popen[bytes],
    task_ids: list[str],
    queues: list[bytes],
    enqueued: tuple[RedisUsage, RedisUsage],
) -> dict[str, Any]:
    harness.watcher.begin(task_ids)
    cpu0, sim0, redis0 = tree_cpu_s(worker.pid), sim.cpu_s(), redis_usage(harness.redis)
    released = time.monotonic()
    release_queues(harness, queues)
    finished = harness.watcher.wait_all(harness.cfg.drain_timeout_s)
    cpu1, sim1, redis1 = tree_cpu_s(worker.pid), sim.cpu_s(), redis_usage(harness.redis)
    rss_mb = tree_peak_rss_mb(worker.pid)
    times = harness.watcher.finish_times()
    stats = sim.stats()
    succeeded, failed = _count_results(harness, task_ids)
    done = max(len(times), 1)
    drain_s = times[-1] - released if times else None
    return {
        "completed": succeeded,
        "failed": failed,
        "timed_out": not finished,
        "throughput_per_s": len(times) / drain_s if drain_s else None,
        "steady_throughput_per_s": steady_rate(times),
        "drain_s": drain_s,
        "first_to_last_s": times[-1] - times[0] if times else None,
        "cpu_ms_per_task": (cpu1 - cpu0) * 1000 / done,
        "simulator_cpu_ms_per_task": (sim1 - sim0) * 1000 / done,
        **redis_per_task(enqueued, (redis0, redis1), done),
        "peak_rss_mb": rss_mb,
        "simulator_max_in_flight": stats.get("max_in_flight"),
        "simulator_calls": stats.get("calls"),
    }


def run_drains(harness: Harness, sim: SimProcess, kinds: list[Kind]) -> dict[str, dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {kind.name: [] for kind in kinds}
    label = f"drain of {harness.cfg.tasks} at {sim.latency_s * 1000:g} ms"
    for rep in range(harness.cfg.repeat):
        for kind in kinds:
            run = drain_once(harness, kind, sim)
            runs[kind.name].append(run)
            progress(
                f"{label}, {kind.name} {rep + 1}/{harness.cfg.repeat}: "
                f"{run['completed']} done, {run['throughput_per_s'] or 0:.0f}/s, "
                f"{run['cpu_ms_per_task']:.2f} ms CPU/task, "
                f"{run['simulator_max_in_flight']} max in flight, "
                f"{run['peak_rss_mb']:.0f} MB"
            )
    return {
        kind.name: _drain_figures(harness, kind, sim.latency_s, runs[kind.name]) for kind in kinds
    }


def _drain_figures(
    harness: Harness, kind: Kind, latency_s: float, runs: list[dict[str, Any]]
) -> dict[str, Any]:
    limit = littles_limit(kind.cap, latency_s)
    figures: dict[str, Any] = {
        "worker": kind.name,
        "latency_ms": latency_s * 1000,
        "tasks": harness.cfg.tasks,
        "worker_processes": kind.processes,
        "in_flight_cap": kind.cap,
        "littles_limit_per_s": limit,
        "completed": [run["completed"] for run in runs],
        "failed": [run["failed"] for run in runs],
        "timed_out": [run["timed_out"] for run in runs],
    }
    for key in (
        "throughput_per_s",
        "steady_throughput_per_s",
        "drain_s",
        "first_to_last_s",
        "cpu_ms_per_task",
        "simulator_cpu_ms_per_task",
        "redis_cpu_us_per_task",
        "redis_enqueue_cpu_us_per_task",
        "redis_drain_cpu_us_per_task",
        "redis_commands_per_task",
        "redis_enqueue_commands_per_task",
        "redis_core_saturates_at_per_s",
        "peak_rss_mb",
        "simulator_max_in_flight",
    ):
        figures[key] = summarize([run[key] for run in runs])
    figures["redis_top_commands_per_task"] = _top_commands(runs)
    figures["littles_ratio"] = summarize([ratio(run["throughput_per_s"], limit) for run in runs])
    figures["steady_littles_ratio"] = summarize(
        [ratio(run["steady_throughput_per_s"], limit) for run in runs]
    )
    return figures


def _top_commands(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each command among any run's most called, per task, over the runs (most called first)."""
    names = {name for run in runs for name in run["redis_top_commands_per_task"]}
    per_name = {
        name: summarize([run["redis_top_commands_per_task"].get(name, 0.0) for run in runs])
        for name in names
    }
    return dict(sorted(per_name.items(), key=lambda item: -(item[1]["median"] or 0)))
