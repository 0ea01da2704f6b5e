"""The options of ``genqueue bench`` and the configuration they resolve to."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from genqueue.errors import CommandError

PHASES = ("drain", "overhead", "bare", "enqueue", "latency")
SCENARIOS = ("standard", "mixed", "batching", "fair-backlog", "pool")
#: The fair-backlog scenario's backlog of one tenant, unless --tasks says.
FAIR_BACKLOG_TASKS = 50_000


class BenchError(CommandError):
    """The benchmark cannot go on; the message says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``genqueue bench``."""
    parser.add_argument(
        "--tasks", type=int, default=None,
        help="tasks per drain (default 2000); fair-backlog: tenant a's backlog (50000)",
    )  # fmt: skip
    parser.add_argument(
        "--latency-ms", type=float, default=500.0, help="simulator latency of the I/O drain (500)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per figure (3)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 50 tasks, 1 repetition, short phases"
    )
    parser.add_argument(
        "--only", action="append", choices=PHASES, help="run only this phase (repeatable)"
    )
    parser.add_argument("--json-out", type=Path, help="also write the JSON report to this file")
    parser.add_argument(
        "--soak-littles",
        action="store_true",
        help="the Little's-law soak: --latency-ms 5000 --tasks 4000 (drain only unless --only)",
    )
    parser.add_argument("--clients", type=int, default=32, help="API clients (default 32)")
    parser.add_argument(
        "--enqueue-seconds", type=float, default=10.0, help="seconds per enqueue run (10)"
    )
    parser.add_argument(
        "--latency-samples", type=int, default=200, help="tasks per latency run (200)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=300.0, help="seconds a drain may take (300)"
    )
    parser.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="standard",
        help="standard: the phases; mixed: a batch backlog and interactive tasks on a capped "
        "endpoint (docs/scheduling.md); batching: max_concurrency auto against fixed caps on "
        "a batching simulator (docs/endpoints.md); fair-backlog: one tenant's huge backlog and "
        "two others' bursts, fair by tasks and by tokens (docs/scheduling.md); pool: a pool of "
        "three replicas, one killed mid-run, against two alone",
    )
    parser.add_argument(
        "--batching-seconds", type=float, default=15.0,
        help="batching: seconds measured per cap (15)",
    )  # fmt: skip
    parser.add_argument(
        "--pool-seconds", type=float, default=30.0,
        help="pool: seconds measured before the kill and with two alone (30); 1.5x after it",
    )  # fmt: skip
    parser.add_argument(
        "--mixed-batch", type=int, default=10_000, help="mixed: batch tasks (10000)"
    )
    parser.add_argument(
        "--mixed-seconds", type=float, default=60.0,
        help="mixed, fair-backlog: seconds measured (60)",
    )  # fmt: skip
    parser.add_argument(
        "--mixed-every", type=float, default=1.0, help="mixed: an interactive task every (1 s)"
    )
    parser.add_argument(
        "--worker-code", type=Path, metavar="DIR",
        help="fair-backlog: also run a genqueue worker from the checkout DIR (the code before a "
        "change), first on its PYTHONPATH",
    )  # fmt: skip
    parser.add_argument(
        "--flush", action="store_true", help="empty the bench's Redis database even if not empty"
    )


@dataclass(frozen=True)
class BenchConfig:
    tasks: int
    latency_s: float
    repeat: int
    phases: tuple[str, ...]
    clients: int
    enqueue_s: float
    latency_samples: int
    drain_timeout_s: float
    flush: bool
    quick: bool
    scenario: str = "standard"
    mixed_batch: int = 10_000
    mixed_s: float = 60.0
    mixed_every_s: float = 1.0
    batching_s: float = 15.0
    pool_s: float = 30.0
    worker_code: Path | None = None


def resolve_config(args: argparse.Namespace) -> BenchConfig:
    fair = args.scenario == "fair-backlog"
    tasks = args.tasks if args.tasks is not None else (FAIR_BACKLOG_TASKS if fair else 2000)
    latency_ms = args.latency_ms
    phases = tuple(args.only or PHASES)
    if args.soak_littles:
        tasks, latency_ms = max(tasks, 4000), 5000.0
        phases = tuple(args.only or ("drain",))
    repeat, enqueue_s, samples = args.repeat, args.enqueue_seconds, args.latency_samples
    if args.quick:
        tasks, repeat, enqueue_s, samples = 50, 1, min(enqueue_s, 2.0), min(samples, 20)
        if fair:  # a backlog far beyond the workers' windows all the same
            tasks = min(args.tasks or 2000, 2000)
    if tasks < 1 or repeat < 1 or latency_ms < 0 or enqueue_s <= 0 or samples < 1:
        raise BenchError("--tasks, --repeat and --latency-samples must be positive")
    if args.pool_seconds < 3:
        raise BenchError("--pool-seconds must be at least 3")
    worker_code = args.worker_code.resolve() if args.worker_code else None
    if worker_code is not None and not (worker_code / "worker" / "__init__.py").is_file():
        raise BenchError(f"--worker-code {args.worker_code}: no worker/ package there")
    return BenchConfig(
        tasks=tasks,
        latency_s=latency_ms / 1000,
        repeat=repeat,
        phases=tuple(dict.fromkeys(phases)),
        clients=max(1, args.clients),
        enqueue_s=enqueue_s,
        latency_samples=samples,
        drain_timeout_s=min(args.drain_timeout, 60.0) if args.quick else args.drain_timeout,
        flush=args.flush,
        quick=args.quick,
        scenario=args.scenario,
        mixed_batch=min(args.mixed_batch, 400) if args.quick else args.mixed_batch,
        mixed_s=min(args.mixed_seconds, 15.0) if args.quick else args.mixed_seconds,
        mixed_every_s=args.mixed_every,
        batching_s=min(args.batching_seconds, 4.0) if args.quick else args.batching_seconds,
        pool_s=min(args.pool_seconds, 3.0) if args.quick else args.pool_seconds,
        worker_code=worker_code,
    )
