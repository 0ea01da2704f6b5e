"""Soak run: many tasks through two workers while a chaos loop kills worker processes.

    python -m genqueue.bench.soak --tasks 10000 --kill-every 5

Starts its own embedded Redis (so memory figures are genqueue's alone), a simulator failing
``--fail-rate`` of calls with 503, and two ``genqueue worker`` supervisors. It enqueues the
tasks, SIGKILLs a random worker process every ``--kill-every`` seconds (its supervisor starts
it again), waits for every task to reach a final state, and prints one JSON line: tasks lost
(must be 0), succeeded, failed, extra endpoint calls, the most calls the endpoint saw at once
against the cap, and Redis memory at the start and the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import requests

from api_producer.producers.direct import DirectProducer
from genqueue.bench.processes import base_env, children_of
from genqueue.embedded_redis import EmbeddedRedis, free_port
from worker import keys
from worker.contract import GenerationRequest
from worker.settings import Settings

FINAL = {b"SUCCESS", b"FAILURE", b"REVOKED"}


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def settle(client: redis.Redis, pending: set[str], final: dict[str, bytes]) -> None:
    """Move the tasks of ``pending`` that reached a final state into ``final`` (remembered, so
    a result that later expires still counts)."""
    ordered = list(pending)
    pipe = client.pipeline(transaction=False)
    for task_id in ordered:
        pipe.get(keys.celery_result(task_id))
    for task_id, raw in zip(ordered, pipe.execute(), strict=True):
        state = json.loads(raw)["status"].encode() if raw else b"PENDING"
        if state in FINAL:
            final[task_id] = state
            pending.discard(task_id)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="genqueue-soak-"))
    server = EmbeddedRedis(work / "redis").start()
    client = redis.Redis.from_url(server.url)
    sim_port = free_port()
    env = base_env()
    env.update(
        REDIS_URL=server.url,
        RUNPOD_ENDPOINT_URL=f"http://127.0.0.1:{sim_port}",
        RUNPOD_MAX_CONCURRENCY=str(args.cap),
        GENQUEUE_WORKER_PROCESSES="1",
        GENQUEUE_WORKER_CONCURRENCY=str(args.concurrency),
        GENQUEUE_RETRY_MAX_ATTEMPTS="8",
        GENQUEUE_RETRY_BASE_DELAY_S="0.2",
        GENQUEUE_RETRY_MAX_DELAY_S="2",
        GENQUEUE_LOG_LEVEL="WARNING",
        GENQUEUE_RESULT_TTL_S=str(args.result_ttl_s),
    )
    genqueue = [sys.executable, "-m", "genqueue"]
    processes = [
        start(
            [*genqueue, "simulate", "--port", str(sim_port), "--latency", str(args.latency_s),
             "--fail-rate", str(args.fail_rate), "--fail-status", "503"],
            env, work / "simulator.log",
        )
    ]  # fmt: skip
    sim = f"http://127.0.0.1:{sim_port}"
    time.sleep(1.5)
    memory_start = int(client.info("memory")["used_memory"])
    workers = [
        start([*genqueue, "worker", "--hostname", f"soak{i}@%h"], env, work / f"worker{i}.log")
        for i in range(2)
    ]
    processes += workers
    try:
        return _drive(args, server, client, sim, workers, memory_start, work)
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        server.stop()


def _drive(
    args: argparse.Namespace,
    server: EmbeddedRedis,
    client: redis.Redis,
    sim: str,
    workers: list[subprocess.Popen[bytes]],
    memory_start: int,
    work: Path,
) -> dict[str, Any]:
    producer = DirectProducer(Settings(redis_url=server.url, result_ttl_s=args.result_ttl_s))
    task_ids: list[str] = []
    for start_at in range(0, args.tasks, 500):
        size = min(500, args.tasks - start_at)
        batch = [
            GenerationRequest.model_validate(
                {"prompt": f"soak {start_at + i}", "params": {"max_tokens": 8}}
            )
            for i in range(size)
        ]
        task_ids += producer.submit_many(batch).task_ids
    began = time.monotonic()
    kills = 0
    next_kill = began + args.kill_every
    pending: set[str] = set(task_ids)
    final_states: dict[str, bytes] = {}
    timeline: list[dict[str, float]] = []
    next_sample = began
    while time.monotonic() - began < args.timeout_s:
        time.sleep(1)
        settle(client, pending, final_states)
        if time.monotonic() >= next_sample or not pending:
            timeline.append(_sample(sim, began, len(final_states), kills))
            next_sample = time.monotonic() + args.sample_every_s
        if not pending:
            break
        if time.monotonic() >= next_kill:
            victims = [pid for w in workers for pid in children_of(w.pid)]
            if victims:
                os.kill(random.choice(victims), signal.SIGKILL)
                kills += 1
            next_kill = time.monotonic() + args.kill_every
    elapsed_s = time.monotonic() - began
    stats = requests.get(f"{sim}/_sim/stats", timeout=5).json()
    counts: dict[bytes, int] = {}
    for state in final_states.values():
        counts[state] = counts.get(state, 0) + 1
    succeeded = counts.get(b"SUCCESS", 0)
    final = len(final_states)
    # Every successful endpoint answer beyond one per succeeded task is an extra call.
    producer.close()
    memory_end = int(client.info("memory")["used_memory"])
    if args.wait_expiry:
        # Past the retention, results and records are gone: memory is back near the start.
        time.sleep(args.result_ttl_s + 5)
    return {
        "tasks": len(task_ids),
        "lost": len(task_ids) - final,
        "succeeded": succeeded,
        "failed": counts.get(b"FAILURE", 0),
        "worker_kills": kills,
        "endpoint_calls": stats["calls"],
        "extra_endpoint_calls": stats["completions_ok"] - succeeded,
        "max_in_flight": stats["max_in_flight"],
        "in_flight_cap": args.cap,
        "fail_rate": args.fail_rate,
        "elapsed_s": round(elapsed_s, 1),
        "redis_used_memory_start": memory_start,
        "redis_used_memory_end": memory_end,
        "result_ttl_s": args.result_ttl_s,
        "redis_used_memory_after_retention": (
            int(client.info("memory")["used_memory"]) if args.wait_expiry else None
        ),
        "redis_keys_after": int(client.dbsize()),
        "timeline": timeline,
        "logs": str(work),
    }


def _sample(sim: str, began: float, finished: int, kills: int) -> dict[str, float]:
    """One point of the timeline: tasks finished, endpoint calls and calls in flight so far,
    to see whether the rate under kills falls as the run goes on."""
    stats = requests.get(f"{sim}/_sim/stats", timeout=5).json()
    return {
        "t_s": round(time.monotonic() - began, 1),
        "finished": finished,
        "kills": kills,
        "endpoint_calls": stats["calls"],
        "in_flight": stats["in_flight"],
        "load_1m": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds between kills")
    parser.add_argument("--fail-rate", type=float, default=0.1)
    parser.add_argument("--latency-s", type=float, default=0.05)
    parser.add_argument("--cap", type=int, default=64, help="RUNPOD_MAX_CONCURRENCY")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--timeout-s", type=float, default=900)
    parser.add_argument("--sample-every-s", type=float, default=20, help="timeline spacing")
    parser.add_argument(
        "--result-ttl-s", type=int, default=600, help="GENQUEUE_RESULT_TTL_S (>= 4 x 30 s)"
    )
    parser.add_argument(
        "--wait-expiry", action="store_true", help="measure memory again after the retention"
    )
    report = run(parser.parse_args())
    print(json.dumps(report))
    return 0 if report["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
