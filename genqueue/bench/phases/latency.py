"""The latency phase: submit to result seen, one task at a time, beside a direct call."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import requests

from genqueue.bench.config import BenchError
from genqueue.bench.figures import percentile, summarize
from genqueue.bench.harness import Harness
from genqueue.bench.progress import progress
from genqueue.bench.simulator_process import SimProcess

LATENCY_TIMEOUT_S = 30.0
LATENCY_WARMUP = 10


def run_latency(harness: Harness, sim: SimProcess) -> dict[str, Any]:
    figures: dict[str, Any] = {"samples": harness.cfg.latency_samples}
    figures["direct_call"] = _latency_figures(
        [_direct_call_latency(harness, sim) for _ in range(harness.cfg.repeat)]
    )
    for kind in (harness.genqueue, harness.bare):
        harness.redis.flushdb()
        worker = harness.start_worker(kind, sim)
        try:
            with kind.submitter() as submit:
                _sequential(harness, submit, LATENCY_WARMUP)
                runs = [_sequential(harness, submit) for _ in range(harness.cfg.repeat)]
        finally:
            harness.stop_worker(worker)
        figures[kind.name] = _latency_figures(runs)
        progress(
            f"latency {kind.name}: p50 {figures[kind.name]['p50_ms']['median']} ms, "
            f"p99 {figures[kind.name]['p99_ms']['median']} ms"
        )
    harness.redis.flushdb()
    return figures


def _sequential(
    harness: Harness, submit: Callable[[], str], count: int | None = None
) -> list[float]:
    samples = []
    harness.watcher.begin([])
    for _ in range(count or harness.cfg.latency_samples):
        started = time.monotonic()
        task_id = submit()
        seen = harness.watcher.wait_for(task_id, LATENCY_TIMEOUT_S)
        if seen is None:
            raise BenchError(f"task {task_id} had no result after {LATENCY_TIMEOUT_S:g}s")
        samples.append(seen - started)
    return samples


def _direct_call_latency(harness: Harness, sim: SimProcess) -> list[float]:
    body = harness.bare.completion_body
    samples = []
    with requests.Session() as session:
        for _ in range(harness.cfg.latency_samples):
            started = time.monotonic()
            session.post(f"{sim.url}/v1/completions", json=body, timeout=10).raise_for_status()
            samples.append(time.monotonic() - started)
    return samples


def _latency_figures(runs: list[list[float]]) -> dict[str, Any]:
    return {
        "p50_ms": summarize([percentile(run, 50) * 1000 for run in runs]),
        "p99_ms": summarize([percentile(run, 99) * 1000 for run in runs]),
        "mean_ms": summarize([statistics.fmean(run) * 1000 for run in runs]),
    }
