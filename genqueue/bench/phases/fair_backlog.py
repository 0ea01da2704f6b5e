"""``genqueue bench --scenario fair-backlog``: one tenant's huge backlog, two others' bursts.

Tenant ``a`` has a backlog of ``--tasks`` tasks (50,000 by default) released to the worker at
once; 2 s later, and every ``BURST_EVERY_S`` from then on, tenants ``b`` and ``c`` each send a
burst of ``BURST`` tasks, at the same priority; weights 1, 1 and 2 (a tenants file). The
simulator answers in ``LATENCY_S`` and the cap is ``CAP`` calls (``genqueue worker`` with its
defaults otherwise). Measured over ``--fair-seconds``: b's and c's time to start (a task's start
is when its result was seen, less the call's latency), the shares of the calls while all three
had work waiting, the endpoint's use, and Redis's commands and CPU and the worker's CPU per call
(from when the backlog was sorted on: the one-off sort is timed apart). Three runs:

1. genqueue, fair by tasks (the default), short prompts for all;
2. bare Celery (``-c CAP``, first in, first out) with the same backlog and bursts;
3. genqueue with ``GENQUEUE_FAIRNESS=tokens``: a's prompts long (``LONG_WORDS`` tokens), b's
   short (``SHORT_WORDS``), c's half and half; its backlog is at most ``TOKENS_BACKLOG_MAX``
   tasks (50,000 long prompts and their records would take some 400 MB of Redis), and the
   shares are of the tokens (each task's estimate, which the simulator's count matches);
4. with ``--worker-code DIR``: run 1 again, its worker started from the checkout ``DIR`` (the
   code before a change, against this one in the same run).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from celery import Celery

from genqueue.bench.fair_figures import Sent, contended_shares, time_to_start
from genqueue.bench.harness import Harness
from genqueue.bench.phases.drain import hold_queues, release_queues
from genqueue.bench.processes import tree_cpu_s
from genqueue.bench.progress import progress
from genqueue.bench.redis_db import RedisUsage, redis_usage
from genqueue.bench.simulator_process import SimProcess
from genqueue.bench.workers import BARE_TASK, BATCH, REQUEST, BareKind, Kind
from worker.contract import GenerationRequest, request_tokens_estimate

CAP = 4
LATENCY_S = 0.5
WEIGHTS = {"a": 1, "b": 1, "c": 2}
BURST = 10
FIRST_BURST_S = 2.0
BURST_EVERY_S = 5.0
#: How long the bursts sent last may take to start after the window.
TAIL_S = 15.0
TOKENS_BACKLOG_MAX = 5_000
LONG_WORDS, SHORT_WORDS = 1_000, 25
DEFAULT_MAX_TOKENS = 512


def run_fair_backlog(harness: Harness) -> dict[str, Any]:
    cfg = harness.cfg
    figures: dict[str, Any] = {
        "cap": CAP, "latency_ms": LATENCY_S * 1000, "weights": WEIGHTS, "burst": BURST,
        "burst_every_s": BURST_EVERY_S, "seconds": cfg.mixed_s, "backlog_tasks": cfg.tasks,
        "endpoint_limit_per_s": CAP / LATENCY_S,
        "tokens_backlog": min(cfg.tasks, TOKENS_BACKLOG_MAX),
    }  # fmt: skip
    bare = BareKind(harness.settings)
    bare.cap = CAP
    runs: list[tuple[str, Kind, str, int, dict[str, str]]] = [
        ("genqueue", harness.genqueue, "tasks", cfg.tasks, {}),
        ("bare", bare, "tasks", cfg.tasks, {}),
        ("genqueue_tokens", harness.genqueue, "tokens", min(cfg.tasks, TOKENS_BACKLOG_MAX), {}),
    ]
    if cfg.worker_code is not None:
        figures["worker_code"] = str(cfg.worker_code)
        code_env = {"PYTHONPATH": str(cfg.worker_code)}
        runs.append(("genqueue_worker_code", harness.genqueue, "tasks", cfg.tasks, code_env))
    with harness.simulator(LATENCY_S) as sim:
        for name, kind, fairness, backlog, code_env in runs:
            found = _once(harness, kind, sim, fairness, backlog, code_env)
            figures[name] = found
            b, c = found["b"]["first_of_burst_s"], found["c"]["first_of_burst_s"]
            progress(
                f"fair-backlog, {name}: first start of a burst b p50 {b['p50']} s p99 "
                f"{b['p99']} s, c p50 {c['p50']} s p99 {c['p99']} s; shares "
                f"{found['shares']['call_shares']} of the calls, "
                f"{found['shares']['token_shares']} of the tokens"
            )
    harness.redis.flushdb()
    return figures


def _prompt(tenant: str, fairness: str, index: int) -> str:
    if fairness != "tokens":
        return str(REQUEST["prompt"])
    long = tenant == "a" or (tenant == "c" and index % 2 == 0)
    return "abc " * (LONG_WORDS if long else SHORT_WORDS)


def _request(tenant: str, fairness: str, index: int) -> GenerationRequest:
    return GenerationRequest.model_validate(
        {**REQUEST, "prompt": _prompt(tenant, fairness, index), "tenant": tenant}
    )


class _Sender:
    """Sends tasks of a tenant: genqueue's direct producer, or plain ``send_task`` of the bare
    task (which knows no tenants: first in, first out)."""

    def __init__(self, harness: Harness, kind: Kind, fairness: str) -> None:
        self._fairness = fairness
        self._producer: Any = None
        self._app: Celery | None = None
        self._kind = self.kind = kind
        if kind.name == "genqueue":
            from api_producer.producers.direct import DirectProducer

            self._producer = DirectProducer(harness.settings)
        else:
            self._app = Celery("genqueue-bench-client", broker=harness.url, set_as_current=False)

    def send(self, tenant: str, count: int) -> list[tuple[str, int]]:
        """``count`` tasks of ``tenant``: their ids and estimated tokens."""
        requests = [_request(tenant, self._fairness, n) for n in range(count)]
        costs = [request_tokens_estimate(r, DEFAULT_MAX_TOKENS) for r in requests]
        if self._app is not None:
            assert isinstance(self._kind, BareKind)
            kwargs = self._kind.task_kwargs
            ids = [str(self._app.send_task(BARE_TASK, kwargs=kwargs).id) for _ in requests]
            return list(zip(ids, costs, strict=True))
        ids = []
        for start in range(0, count, BATCH):
            ids += self._producer.submit_many(requests[start : start + BATCH]).task_ids
        return list(zip(ids, costs, strict=True))

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
        if self._app is not None:
            self._app.close()


def _tenants_file() -> Path:
    path = Path(tempfile.mkdtemp(prefix="genqueue-bench-")) / "tenants.toml"
    path.write_text(
        "".join(f"[tenants.{n}]\nkey_hashes = []\nweight = {w}\n" for n, w in WEIGHTS.items())
    )
    return path


def _once(
    harness: Harness,
    kind: Kind,
    sim: SimProcess,
    fairness: str,
    backlog: int,
    code_env: dict[str, str],
) -> dict[str, Any]:
    cfg = harness.cfg
    harness.redis.flushdb()
    sender = _Sender(harness, kind, fairness)
    try:
        backlog_ids = sender.send("a", backlog)
        queues = hold_queues(harness, kind, backlog)
        sim.reset()
        env = {"RUNPOD_MAX_CONCURRENCY": str(CAP), "GENQUEUE_TENANTS_FILE": str(_tenants_file()),
               "GENQUEUE_FAIRNESS": fairness, **code_env}  # fmt: skip
        worker = harness.start_worker(kind, sim, env)
        try:
            return _measure(harness, sender, worker.pid, queues, backlog_ids)
        finally:
            harness.stop_worker(worker)
    finally:
        sender.close()
        progress(f"fair-backlog: a run of {cfg.mixed_s:g} s with a backlog of {backlog} done")


def _measure(
    harness: Harness, sender: _Sender, worker_pid: int, queues: list[bytes],
    backlog_ids: list[tuple[str, int]],
) -> dict[str, Any]:  # fmt: skip
    cfg = harness.cfg
    tasks: dict[str, tuple[str, int, float, int]] = {}  # id -> tenant, burst, sent, tokens
    harness.watcher.begin([task_id for task_id, _ in backlog_ids])
    sorts = sender.kind.name == "genqueue"
    started = time.monotonic()
    release_queues(harness, queues)
    tasks |= {task_id: ("a", -1, started, cost) for task_id, cost in backlog_ids}
    sorted_s: float | None = None
    # From when the backlog is sorted (genqueue's one-off cost, timed apart), else the start.
    at_start = (started, redis_usage(harness.redis), tree_cpu_s(worker_pid))
    steady: tuple[float, RedisUsage, float] | None = None if sorts else at_start
    burst, next_burst = 0, started + FIRST_BURST_S
    while (now := time.monotonic()) < started + cfg.mixed_s:
        if sorts and sorted_s is None and not any(harness.redis.llen(q) for q in queues):
            sorted_s = now - started  # the backlog is sorted (bare Celery: never)
        if steady is None and sorted_s is not None:
            steady = (now, redis_usage(harness.redis), tree_cpu_s(worker_pid))
        if now >= next_burst:
            for tenant in ("b", "c"):
                sent = time.monotonic()
                tasks |= {i: (tenant, burst, sent, cost) for i, cost in sender.send(tenant, BURST)}
            burst, next_burst = burst + 1, next_burst + BURST_EVERY_S
        time.sleep(0.05)
    window_end = time.monotonic()
    steady = steady or at_start
    redis1, cpu1 = redis_usage(harness.redis), tree_cpu_s(worker_pid)
    bursts = [t for t, (tenant, *_) in tasks.items() if tenant != "a"]
    for task_id in bursts:
        harness.watcher.wait_for(task_id, max(0.0, window_end + TAIL_S - time.monotonic()))
    watched = time.monotonic()
    done = harness.watcher.done_at(list(tasks))
    return _figures(tasks, done, started, window_end, watched, sorted_s, steady, redis1, cpu1)


def _figures(
    tasks: dict[str, tuple[str, int, float, int]], done: dict[str, float], started: float,
    window_end: float, watched: float, sorted_s: float | None,
    steady: tuple[float, RedisUsage, float], redis1: RedisUsage, cpu1: float,
) -> dict[str, Any]:  # fmt: skip
    def start_of(task_id: str) -> float | None:
        at = done.get(task_id)
        return None if at is None or at > window_end + TAIL_S else at - LATENCY_S

    sent = [
        Sent(tenant, burst, at, start_of(task_id), cost)
        for task_id, (tenant, burst, at, cost) in tasks.items()
    ]
    in_window = [s for s in sent if s.started_s is not None and s.started_s <= window_end]
    span_s = window_end - started
    # Calls finished from the end of the first call on: the cap's use while work waits.
    calls = sum(1 for at in done.values() if started + LATENCY_S < at <= window_end)
    steady_at, redis0, cpu0 = steady
    steady_calls = max(1, sum(1 for at in done.values() if steady_at < at <= window_end))
    return {
        "backlog_sorted_after_s": round(sorted_s, 2) if sorted_s is not None else None,
        "b": time_to_start(sent, "b", watched - LATENCY_S),
        "c": time_to_start(sent, "c", watched - LATENCY_S),
        "shares": contended_shares(in_window, list(WEIGHTS)),
        "shares_after_first_start": contended_shares(in_window, list(WEIGHTS), True),
        "calls_in_window": calls,
        "endpoint_use": round(calls / (span_s - LATENCY_S) / (CAP / LATENCY_S), 3),
        "calls_measured_per_task": steady_calls,
        "redis_commands_per_call": round((redis1.commands - redis0.commands) / steady_calls, 1),
        "redis_cpu_us_per_call": round((redis1.cpu_s - redis0.cpu_s) * 1e6 / steady_calls, 1),
        "worker_cpu_ms_per_call": round((cpu1 - cpu0) * 1e3 / steady_calls, 2),
    }
