"""The enqueue phase: ``POST /v1/tasks`` against ``genqueue api``, and the direct producer."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from typing import Any

import requests

from genqueue.bench.config import BenchError
from genqueue.bench.figures import summarize
from genqueue.bench.harness import Harness
from genqueue.bench.phases.api_load import API_KEY, api_load
from genqueue.bench.processes import START_TIMEOUT_S, base_env, tree_cpu_s
from genqueue.bench.progress import progress
from genqueue.bench.redis_db import redis_usage
from genqueue.bench.workers import BATCH, REQUEST
from genqueue.embedded_redis import free_port
from worker.contract import GenerationRequest


def run_enqueue(harness: Harness) -> dict[str, Any]:
    harness.redis.flushdb()
    port = free_port()
    api = _start_api(harness, port)
    try:
        asyncio.run(api_load(port, harness.cfg.clients, min(1.0, harness.cfg.enqueue_s)))  # warm
        api_runs = [_api_run(harness, api, port, rep) for rep in range(harness.cfg.repeat)]
    finally:
        harness.children.stop(api)
    direct = {batch: _direct_runs(harness, batch) for batch in (1, BATCH)}
    harness.redis.flushdb()
    return {
        "api": {
            "clients": harness.cfg.clients,
            "seconds": harness.cfg.enqueue_s,
            "requests": [run["requests"] for run in api_runs],
            "errors": [run["errors"] for run in api_runs],
            "requests_per_s": summarize([run["requests_per_s"] for run in api_runs]),
            "p50_ms": summarize([run["p50_ms"] for run in api_runs]),
            "p99_ms": summarize([run["p99_ms"] for run in api_runs]),
            "api_cpu_ms_per_request": summarize([run["api_cpu_ms"] for run in api_runs]),
            "client_cpu_ms_per_request": summarize([run["client_cpu_ms"] for run in api_runs]),
            "redis_cpu_us_per_request": summarize([run["redis_cpu_us"] for run in api_runs]),
            "redis_commands_per_request": summarize([run["redis_commands"] for run in api_runs]),
        },
        "direct_submit_per_s": summarize(direct[1]),
        "direct_submit_many_per_s": summarize(direct[BATCH]),
    }


def _api_run(harness: Harness, api: subprocess.Popen[bytes], port: int, rep: int) -> dict[str, Any]:
    """One timed API run, with the CPU the server and this load generator spent."""
    server0, client0 = tree_cpu_s(api.pid), time.process_time()
    redis0 = redis_usage(harness.redis)
    run = asyncio.run(api_load(port, harness.cfg.clients, harness.cfg.enqueue_s))
    redis1 = redis_usage(harness.redis)
    done = max(run["requests"], 1)
    run["api_cpu_ms"] = (tree_cpu_s(api.pid) - server0) * 1000 / done
    run["client_cpu_ms"] = (time.process_time() - client0) * 1000 / done
    run["redis_cpu_us"] = (redis1.cpu_s - redis0.cpu_s) * 1e6 / done
    run["redis_commands"] = (redis1.commands - redis0.commands) / done
    progress(
        f"API enqueue {rep + 1}/{harness.cfg.repeat}: {run['requests_per_s']:.0f}/s, "
        f"p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms, {run['errors']} errors, "
        f"server {run['api_cpu_ms']:.2f} / client {run['client_cpu_ms']:.2f} ms CPU per request"
    )
    return run


def _start_api(harness: Harness, port: int) -> subprocess.Popen[bytes]:
    env = base_env() | {"REDIS_URL": harness.url, "GENQUEUE_API_KEYS": API_KEY}
    argv = [sys.executable, "-m", "genqueue", "api", "--port", str(port)]
    proc = harness.children.spawn("api", argv, env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).ok:
                return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            harness.children.stop(proc)
            raise BenchError(f"the API did not start:\n{harness.children.log_tail('api')}")
        time.sleep(0.1)


def _direct_runs(harness: Harness, batch: int) -> list[float | None]:
    from api_producer.producers.direct import DirectProducer

    request = GenerationRequest.model_validate(REQUEST)
    rates: list[float | None] = []
    for rep in range(harness.cfg.repeat):
        harness.redis.flushdb()
        producer = DirectProducer(harness.settings)
        try:
            producer.submit_many([request] * batch)  # connect and declare first
            count, started = 0, time.perf_counter()
            deadline = started + harness.cfg.enqueue_s
            while time.perf_counter() < deadline:
                count += len(producer.submit_many([request] * batch).task_ids)
            rates.append(count / (time.perf_counter() - started))
        finally:
            producer.close()
        progress(f"direct producer, batches of {batch}, {rep + 1}: {rates[-1]:.0f}/s")
    return rates
