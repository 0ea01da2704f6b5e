"""``genqueue bench``: run the phases asked for, print the table and the JSON line."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

from genqueue.bench.config import BenchConfig, BenchError, resolve_config
from genqueue.bench.harness import Harness
from genqueue.bench.phases.batching import run_batching
from genqueue.bench.phases.drain import run_drains
from genqueue.bench.phases.enqueue import run_enqueue
from genqueue.bench.phases.fair_backlog import run_fair_backlog
from genqueue.bench.phases.latency import run_latency
from genqueue.bench.phases.mixed import run_mixed
from genqueue.bench.phases.pool import run_pool
from genqueue.bench.processes import Children
from genqueue.bench.progress import progress
from genqueue.bench.redis_db import choose_redis
from genqueue.bench.report import build_report, machine_info
from genqueue.bench.table import render_table
from genqueue.bench.workers import Kind
from worker.settings import Settings

#: A 1-minute load average above this at the start is reported: the figures may be skewed.
BUSY_LOAD = 0.5


def run_phases(harness: Harness) -> dict[str, Any]:
    """Run the phases of ``harness.cfg``; their results by name."""
    if harness.cfg.scenario == "mixed":
        return {"mixed": run_mixed(harness)}
    if harness.cfg.scenario == "batching":
        return {"batching": run_batching(harness)}
    if harness.cfg.scenario == "fair-backlog":
        return {"fair_backlog": run_fair_backlog(harness)}
    if harness.cfg.scenario == "pool":
        return {"pool": run_pool(harness)}
    phases = set(harness.cfg.phases)
    results: dict[str, Any] = {}
    if "enqueue" in phases:
        results["enqueue"] = run_enqueue(harness)
    bare_alone = "bare" in phases and not phases & {"drain", "overhead"}
    io_kinds = _kinds(harness, "drain" in phases, bare_alone or {"drain", "bare"} <= phases)
    zero_kinds = _kinds(harness, "overhead" in phases, bare_alone or {"overhead", "bare"} <= phases)
    if io_kinds:
        with harness.simulator(harness.cfg.latency_s) as sim:
            found = run_drains(harness, sim, io_kinds)
        results |= {"drain": found.get("genqueue"), "bare_drain": found.get("bare")}
    if zero_kinds or "latency" in phases:
        with harness.simulator(0.0) as sim:
            if zero_kinds:
                found = run_drains(harness, sim, zero_kinds)
                results["overhead"] = found.get("genqueue")
                results["bare_overhead"] = found.get("bare")
            if "latency" in phases:
                results["latency"] = run_latency(harness, sim)
    return {key: value for key, value in results.items() if value is not None}


def _kinds(harness: Harness, genqueue: bool, bare: bool) -> list[Kind]:
    kinds: list[Kind] = []
    if genqueue:
        kinds.append(harness.genqueue)
    if bare:
        kinds.append(harness.bare)
    return kinds


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    """``genqueue bench``: run the phases, print the table and the JSON line; 0 on success."""
    try:
        cfg = resolve_config(args)
    except BenchError as err:
        print(f"genqueue bench: {err}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="genqueue-bench-"))
    children = Children(workdir)
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    ok = False
    try:
        report = _run(cfg, settings, children)
        ok = True
    except BenchError as err:
        print(f"genqueue bench: {err}\n(logs in {workdir})", file=sys.stderr)
        return 1
    finally:
        children.stop_all()
        signal.signal(signal.SIGTERM, previous)
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
    print(render_table(report))
    line = json.dumps(report, separators=(",", ":"))
    if args.json_out:
        args.json_out.write_text(line + "\n")
    print(line, flush=True)
    return 0


def _run(cfg: BenchConfig, settings: Settings, children: Children) -> dict[str, Any]:
    load = os.getloadavg()[0]
    if load > BUSY_LOAD:
        progress(f"the 1-minute load average is {load:.2f}: other work may skew the figures")
    url = choose_redis(settings, children)
    harness = Harness(cfg, url, children, settings)
    try:
        results = run_phases(harness)
        machine = machine_info(harness.redis) | {"loadavg_at_start": round(load, 2)}
    finally:
        harness.close()
    return build_report(cfg, results, machine)
