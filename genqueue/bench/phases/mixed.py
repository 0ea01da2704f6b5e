"""``genqueue bench --scenario mixed``: the endpoint is the bottleneck, who gets it next?

A batch backlog at priority 2 (one tenant) is released to the workers; interactive tasks at
priority 9 (another tenant) arrive at a steady rate meanwhile. The simulator answers in
``MIXED_LATENCY_S`` and the cap is ``MIXED_CAP`` calls. Measured for genqueue and for bare
Celery (first in, first out, ``-c MIXED_CAP``) in the same run: the interactive tasks' time to
start (their time to a result, less the call's latency) and the batch's throughput. Then, for
genqueue: two tenants of weights 3 and 1 (a tenants file) with backlogs at one priority, the
lighter one's sent first: their shares of the calls while both have work waiting.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery

from genqueue.bench.figures import percentile
from genqueue.bench.harness import Harness
from genqueue.bench.phases.drain import hold_queues, release_queues
from genqueue.bench.progress import progress
from genqueue.bench.simulator_process import SimProcess
from genqueue.bench.workers import BARE_TASK, BATCH, REQUEST, BareKind, Kind
from worker.contract import GenerationRequest

MIXED_CAP = 4
MIXED_LATENCY_S = 1.0
BATCH_PRIORITY, INTERACTIVE_PRIORITY = 2, 9
#: How long the interactive tasks sent last may take to finish after the window.
TAIL_S = 10.0
#: The fairness run: each tenant's backlog, their weights, the call's latency.
FAIR_TASKS = 200
FAIR_WEIGHTS = {"heavy": 3, "light": 1}
FAIR_LATENCY_S = 0.2


def run_mixed(harness: Harness) -> dict[str, Any]:
    cfg = harness.cfg
    figures: dict[str, Any] = {
        "cap": MIXED_CAP,
        "latency_ms": MIXED_LATENCY_S * 1000,
        "batch_tasks": cfg.mixed_batch,
        "seconds": cfg.mixed_s,
        "interactive_every_s": cfg.mixed_every_s,
        "endpoint_limit_per_s": MIXED_CAP / MIXED_LATENCY_S,
    }
    bare = BareKind(harness.settings)
    bare.cap = MIXED_CAP
    with harness.simulator(MIXED_LATENCY_S) as sim:
        for kind in (harness.genqueue, bare):
            found = _mixed_once(harness, kind, sim)
            figures[kind.name] = found
            progress(
                f"mixed, {kind.name}: interactive time to start p50 "
                f"{found['time_to_start_p50_s']:.2f} s, p99 {found['time_to_start_p99_s']:.2f} s"
                f" ({found['interactive_unfinished']} unfinished), batch "
                f"{found['batch_per_s']:.2f}/s"
            )
    with harness.simulator(FAIR_LATENCY_S) as sim:
        figures["fairness"] = _fairness_once(harness, sim)
        progress(f"mixed, fairness: {figures['fairness']['heavy_share']:.3f} of the calls to "
                 f"weight 3 (0.75 is 3:1)")  # fmt: skip
    harness.redis.flushdb()
    return figures


def _fairness_once(harness: Harness, sim: SimProcess) -> dict[str, Any]:
    """Two tenants' same-priority backlogs, the lighter one's sent first; the share of the calls
    while both have work waiting (the first ``FAIR_TASKS`` calls) that went to the heavier."""
    from api_producer.producers.direct import DirectProducer

    harness.redis.flushdb()
    tenants = Path(tempfile.mkdtemp(prefix="genqueue-bench-")) / "tenants.toml"
    tenants.write_text(
        "".join(f"[tenants.{n}]\nkey_hashes = []\nweight = {w}\n" for n, w in FAIR_WEIGHTS.items())
    )
    producer = DirectProducer(harness.settings)
    tenant_of: dict[str, str] = {}
    try:
        for name in sorted(FAIR_WEIGHTS, key=FAIR_WEIGHTS.__getitem__):
            request = GenerationRequest.model_validate({**REQUEST, "tenant": name})
            for start in range(0, FAIR_TASKS, BATCH):
                chunk = [request] * min(BATCH, FAIR_TASKS - start)
                tenant_of.update(dict.fromkeys(producer.submit_many(chunk).task_ids, name))
    finally:
        producer.close()
    queues = hold_queues(harness, harness.genqueue, len(tenant_of))
    sim.reset()
    env = {"RUNPOD_MAX_CONCURRENCY": str(MIXED_CAP), "GENQUEUE_TENANTS_FILE": str(tenants)}
    worker = harness.start_worker(harness.genqueue, sim, env)
    try:
        harness.watcher.begin(list(tenant_of))
        release_queues(harness, queues)
        for task_id in tenant_of:
            harness.watcher.wait_for(task_id, 120.0)
        done = harness.watcher.done_at(list(tenant_of))
    finally:
        harness.stop_worker(worker)
    order = [tenant_of[t] for t in sorted(done, key=done.__getitem__)]
    window = order[MIXED_CAP : MIXED_CAP + FAIR_TASKS]  # after the first calls, taken in passing
    return {
        "weights": FAIR_WEIGHTS,
        "tasks_per_tenant": FAIR_TASKS,
        "calls_counted": len(window),
        "heavy_share": round(window.count("heavy") / max(1, len(window)), 3),
    }


def _mixed_once(harness: Harness, kind: Kind, sim: SimProcess) -> dict[str, Any]:
    cfg = harness.cfg
    harness.redis.flushdb()
    with _submitter(harness, kind, BATCH_PRIORITY) as submit:
        batch_ids = _submit_batch(harness, kind, submit)
    queues = hold_queues(harness, kind, len(batch_ids))
    sim.reset()
    env = {"RUNPOD_MAX_CONCURRENCY": str(MIXED_CAP)}
    worker = harness.start_worker(kind, sim, env)
    sent: dict[str, float] = {}
    try:
        harness.watcher.begin(batch_ids)
        started = time.monotonic()
        release_queues(harness, queues)
        with _submitter(harness, kind, INTERACTIVE_PRIORITY) as submit:
            while time.monotonic() - started < cfg.mixed_s:
                sent[submit()] = time.monotonic()
                time.sleep(cfg.mixed_every_s)
        window_end = time.monotonic()
        for task_id in sent:
            harness.watcher.wait_for(task_id, max(0.0, window_end + TAIL_S - time.monotonic()))
        ended = time.monotonic()
        done = harness.watcher.done_at([*sent, *batch_ids])
    finally:
        harness.stop_worker(worker)
    # Unfinished: at least as long as it was watched (a lower bound).
    waits = [done.get(t, ended) - at - MIXED_LATENCY_S for t, at in sent.items()]
    batch_in_window = sum(1 for t in batch_ids if done.get(t, ended + 1) <= window_end)
    span_s = window_end - started
    # Calls finished from the end of the first call on: the cap's use while work waits.
    first_end = started + MIXED_LATENCY_S
    calls_in_window = sum(1 for at in done.values() if first_end < at <= window_end)
    return {
        "interactive_sent": len(sent),
        "interactive_unfinished": sum(1 for t in sent if t not in done),
        "time_to_start_p50_s": round(percentile(waits, 50), 3) if waits else None,
        "time_to_start_p99_s": round(percentile(waits, 99), 3) if waits else None,
        "time_to_start_max_s": round(max(waits), 3) if waits else None,
        "batch_per_s": round(batch_in_window / span_s, 3),
        "endpoint_use": round(
            calls_in_window / (span_s - MIXED_LATENCY_S) / (MIXED_CAP / MIXED_LATENCY_S), 3
        ),
    }


def _submit_batch(harness: Harness, kind: Kind, submit: Callable[[], str]) -> list[str]:
    count = harness.cfg.mixed_batch
    if kind.name != "genqueue":
        return [submit() for _ in range(count)]
    from api_producer.producers.direct import DirectProducer

    request = _request(BATCH_PRIORITY, "batch")
    producer = DirectProducer(harness.settings)
    task_ids: list[str] = []
    try:
        while len(task_ids) < count:
            chunk = [request] * min(BATCH, count - len(task_ids))
            task_ids += producer.submit_many(chunk).task_ids
    finally:
        producer.close()
    return task_ids


def _request(priority: int, text: str) -> GenerationRequest:
    return GenerationRequest.model_validate({**REQUEST, "prompt": text, "priority": priority})


@contextmanager
def _submitter(harness: Harness, kind: Kind, priority: int) -> Iterator[Callable[[], str]]:
    """Sends one task of ``priority``: genqueue's direct producer, or plain ``send_task`` (no
    priority: bare Celery's queue is first in, first out)."""
    if kind.name == "genqueue":
        from api_producer.producers.direct import DirectProducer

        producer = DirectProducer(harness.settings)
        request = _request(priority, "interactive" if priority == INTERACTIVE_PRIORITY else "batch")
        try:
            yield lambda: producer.submit(request)
        finally:
            producer.close()
        return
    assert isinstance(kind, BareKind)
    app = Celery("genqueue-bench-client", broker=harness.url, set_as_current=False)
    kwargs = kind.task_kwargs
    try:
        yield lambda: str(app.send_task(BARE_TASK, kwargs=kwargs).id)
    finally:
        app.close()
