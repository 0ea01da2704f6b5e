"""``genqueue bench --scenario pool``: a pool of three replicas, one killed mid-run.

Each replica is a ``genqueue simulate --latency LATENCY_S`` process; the endpoints file lists
them as one endpoint (``urls = [...]``, ``max_concurrency = CAP`` per replica) and one
``genqueue worker`` (its defaults: breaker, retries) serves it. The load is a backlog large
enough that every slot stays busy through the measured windows (the steady load of a queue that
never runs dry). Two runs, in this order:

- **two alone**: a pool of two replicas; tasks finished a second over ``seconds`` after a
  ``WARMUP_S`` warm-up. The reference the survivors are compared with.
- **three, one killed**: a pool of three; the rate over ``seconds`` before replica 0's
  simulator gets SIGKILL, then the rate every half second after it: how long until the rolling
  ``ROLLING_S`` rate stays within 10 % of the settled rate (that of the last half of the
  ``after_s`` window), and the rate from then to the window's end.

Each run then waits for every task's final state: lost is the tasks without one (in Redis's
result keys) after ``DRAIN_TIMEOUT_S``, failed those whose state is FAILURE.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from genqueue.bench.harness import Harness
from genqueue.bench.phases.drain import hold_queues, release_queues
from genqueue.bench.progress import progress
from genqueue.bench.simulator_process import SimProcess
from worker import keys

LATENCY_S = 0.3
CAP = 4
REPLICAS = 3
WARMUP_S = 5.0
ROLLING_S = 2.0
STEP_S = 0.5
#: The settled rate holds once the rolling rate stays within this of it.
SETTLED_WITHIN = 0.10
DRAIN_TIMEOUT_S = 120.0
#: Tasks beyond what the cap allows (Little's law: cap / latency) in the measured windows, so
#: the backlog never runs dry in them and little is left to drain after.
SURPLUS = 2 * REPLICAS * CAP


def run_pool(harness: Harness) -> dict[str, Any]:
    seconds = harness.cfg.pool_s
    after_s = seconds * 1.5
    warmup_s = min(WARMUP_S, seconds / 2)
    figures: dict[str, Any] = {
        "latency_ms": LATENCY_S * 1000, "cap_per_replica": CAP, "replicas": REPLICAS,
        "seconds": seconds, "after_s": after_s, "warmup_s": warmup_s,
        "littles_limit_per_s": {"3": REPLICAS * CAP / LATENCY_S, "2": 2 * CAP / LATENCY_S},
    }  # fmt: skip
    replicas = [SimProcess(harness.children, LATENCY_S, f"pool-{i}") for i in range(REPLICAS)]
    try:
        figures["two_alone"] = two = _two_alone(harness, replicas[1:], seconds, warmup_s)
        progress(f"pool, two replicas alone: {two['per_s']} tasks/s, lost {two['lost']}")
        figures["killed"] = killed = _killed(harness, replicas, seconds, after_s, warmup_s)
    finally:
        for sim in replicas:
            sim.close()
            harness.children.stop(sim.proc)
    progress(
        f"pool, three then one killed: {killed['before_per_s']} tasks/s before, "
        f"{killed['after_per_s']} after (settled after {killed['settled_after_s']} s), "
        f"lost {killed['lost']}, failed {killed['failed']}"
    )
    if killed["after_per_s"] and two["per_s"]:
        figures["after_over_two_alone"] = round(killed["after_per_s"] / two["per_s"], 3)
    harness.redis.flushdb()
    return figures


def _pool_env(harness: Harness, replicas: list[SimProcess], tag: str) -> dict[str, str]:
    path = Path(harness.children.workdir) / f"pool-{tag}.toml"
    urls = ", ".join(f'"{sim.url}"' for sim in replicas)
    path.write_text(
        f'[endpoints.pool]\nkind = "llamacpp"\nurls = [{urls}]\nmax_concurrency = {CAP}\n'
    )
    return {"GENQUEUE_ENDPOINTS_FILE": str(path), "RUNPOD_ENDPOINT_URL": "",
            "RUNPOD_MAX_CONCURRENCY": str(CAP)}  # fmt: skip


def _backlog(harness: Harness, count: int) -> tuple[list[str], list[bytes]]:
    harness.redis.flushdb()
    task_ids = harness.genqueue.enqueue(count)
    return task_ids, hold_queues(harness, harness.genqueue, len(task_ids))


def _two_alone(
    harness: Harness, replicas: list[SimProcess], seconds: float, warmup_s: float
) -> dict[str, Any]:
    for sim in replicas:
        sim.reset()
    count = int((warmup_s + seconds) * 2 * CAP / LATENCY_S) + SURPLUS
    task_ids, queues = _backlog(harness, count)
    worker = harness.start_worker(
        harness.genqueue, replicas[0], _pool_env(harness, replicas, "two")
    )
    try:
        harness.watcher.begin(task_ids)
        started = time.monotonic()
        release_queues(harness, queues)
        time.sleep(warmup_s + seconds)
        done = harness.watcher.done_at(task_ids)
        lost, failed = _settle(harness, task_ids)
    finally:
        harness.stop_worker(worker)
    served = [sim.stats()["completions_ok"] for sim in replicas]
    window = _count(done, started + warmup_s, started + warmup_s + seconds)
    return {"tasks": len(task_ids), "per_s": round(window / seconds, 2), "lost": lost,
            "failed": failed, "served_by_replica": served}  # fmt: skip


def _killed(
    harness: Harness, replicas: list[SimProcess], seconds: float, after_s: float, warmup_s: float
) -> dict[str, Any]:
    for sim in replicas:
        sim.reset()
    per_s_3, per_s_2 = REPLICAS * CAP / LATENCY_S, 2 * CAP / LATENCY_S
    count = int((warmup_s + seconds) * per_s_3 + after_s * per_s_2) + SURPLUS
    task_ids, queues = _backlog(harness, count)
    worker = harness.start_worker(
        harness.genqueue, replicas[0], _pool_env(harness, replicas, "three")
    )
    try:
        harness.watcher.begin(task_ids)
        started = time.monotonic()
        release_queues(harness, queues)
        time.sleep(warmup_s + seconds)
        killed_served = replicas[0].stats()["completions_ok"]
        os.kill(replicas[0].proc.pid, signal.SIGKILL)  # its calls in flight are dropped
        killed_at = time.monotonic()
        time.sleep(after_s)
        done = harness.watcher.done_at(task_ids)
        lost, failed = _settle(harness, task_ids)
    finally:
        harness.stop_worker(worker)
    served = [sim.stats()["completions_ok"] for sim in replicas[1:]]
    before = _count(done, started + warmup_s, killed_at)
    found: dict[str, Any] = {"tasks": len(task_ids), "lost": lost, "failed": failed,
                             "before_per_s": round(before / (killed_at - started - warmup_s), 2),
                             "killed_replica_served_before_kill": killed_served,
                             "survivors_served": served}  # fmt: skip
    return found | rates_after_kill(done, killed_at, after_s)


def rates_after_kill(done: dict[str, float], killed_at: float, after_s: float) -> dict[str, Any]:
    """The rolling rate every ``STEP_S`` after the kill, when it settled, the rate since."""
    end = killed_at + after_s
    steps = int((after_s - ROLLING_S) / STEP_S) + 1
    rolling = [
        (round(i * STEP_S, 1), _count(done, killed_at + i * STEP_S,
                                      killed_at + i * STEP_S + ROLLING_S) / ROLLING_S)
        for i in range(steps)
    ]  # fmt: skip
    half = killed_at + after_s / 2
    level = _count(done, half, end) / (after_s / 2)
    settled_s: float | None = None
    for at_s, _ in rolling:
        if all(abs(rate - level) <= SETTLED_WITHIN * level for s, rate in rolling if s >= at_s):
            settled_s = at_s
            break
    after: float | None = None
    if settled_s is not None and after_s - settled_s >= ROLLING_S:
        after = round(_count(done, killed_at + settled_s, end) / (after_s - settled_s), 2)
    return {"settled_after_s": settled_s, "after_per_s": after, "settled_level_per_s":
            round(level, 2), "lowest_rolling_per_s": round(min(r for _, r in rolling), 2),
            "rolling_per_s": [(s, round(r, 2)) for s, r in rolling]}  # fmt: skip


def _count(done: dict[str, float], start: float, end: float) -> int:
    return sum(1 for at in done.values() if start < at <= end)


def _settle(harness: Harness, task_ids: list[str]) -> tuple[int, int]:
    """Wait for every task's final state; (lost, failed): those without one, those failed."""
    harness.watcher.wait_all(DRAIN_TIMEOUT_S)
    missing = failed = 0
    for start in range(0, len(task_ids), 500):
        result_keys = [keys.celery_result(t) for t in task_ids[start : start + 500]]
        for raw in harness.redis.mget(result_keys):
            state = json.loads(raw).get("status") if raw else None
            missing += state not in ("SUCCESS", "FAILURE", "REVOKED")
            failed += state in ("FAILURE", "REVOKED")
    return missing, failed
