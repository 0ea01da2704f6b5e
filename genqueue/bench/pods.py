"""A day of bursty load, compressed, against a pod genqueue starts and stops, and one always on.

    python -m genqueue.bench.pods [--bursts 3] [--tasks 200] [--gap-s 20] [--idle-stop-s 4]
                                  [--cold-start-s 2] [--model-load-s 3] [--redis-url URL]

The simulator plays a RunPod pod (its control API, a boot of ``--cold-start-s`` and a model load
of ``--model-load-s`` after each start, 50 ms a completion); one ``genqueue worker`` process
(cap 8) serves it. Each burst sends ``--tasks`` tasks at once through Celery, waits for every
result, then the queue stays empty for ``--gap-s``. Run twice: ``always on`` (the pod runs
throughout, no ``idle_stop_after_s``) and ``lifecycle`` (stopped at the start,
``idle_stop_after_s = --idle-stop-s``). The pod's state and the calls in flight are sampled every
0.1 s: the pod's running seconds, of them the idle ones (running, nothing in flight), the time
from each burst's start to its first result, and the tasks that failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from celery import Celery

from genqueue.bench.processes import Children, base_env
from genqueue.embedded_redis import EmbeddedRedis
from genqueue.simulator import SimulatorConfig, serve_in_thread

POD = "benchpod"
KEY = "bench-account-key"
SAMPLE_S = 0.1


@dataclass
class Sampler:
    """The pod's state and the simulator's calls in flight, every :data:`SAMPLE_S`."""

    url: str
    running_s: float = 0.0
    idle_s: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        session = requests.Session()
        auth = {"Authorization": f"Bearer {KEY}"}
        last = time.monotonic()
        while not self._stop.wait(SAMPLE_S):
            state = session.get(f"{self.url}/v1/pods/{POD}", headers=auth, timeout=5).json()
            in_flight = session.get(f"{self.url}/_sim/stats", timeout=5).json()["in_flight"]
            now = time.monotonic()
            span_s, last = now - last, now
            if state["desiredStatus"] == "RUNNING":
                self.running_s += span_s
                if in_flight == 0:
                    self.idle_s += span_s

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Outcome:
    mode: str
    running_s: float
    idle_s: float
    first_result_s: list[float]
    failed: int
    tasks: int


def _worker(children: Children, redis_url: str, sim_url: str, idle_stop_s: float | None) -> None:
    idle = "" if idle_stop_s is None else f"idle_stop_after_s = {idle_stop_s}\n"
    endpoints = children.workdir / "endpoints.toml"
    endpoints.write_text(
        f'[endpoints.pod]\nurl = "{sim_url}"\nmax_concurrency = 8\nrunpod_pod_id = "{POD}"\n{idle}'
    )
    env = {
        **base_env(),
        "REDIS_URL": redis_url,
        "GENQUEUE_ENDPOINTS_FILE": str(endpoints),
        "GENQUEUE_WORKER_PROCESSES": "1",
        "GENQUEUE_POD_CHECK_INTERVAL_S": "0.5",
        "RUNPOD_REST_API_URL": f"{sim_url}/v1",
        "RUNPOD_API_KEY": KEY,
    }
    children.spawn_worker(env)


def _burst(client: Celery, tasks: int) -> tuple[float, int]:
    """Send ``tasks`` at once; the seconds from the first send to the first result, and the
    tasks that failed."""
    body = {"request": {"prompt": "Hi", "params": {"max_tokens": 4}}}
    started = time.perf_counter()
    first_s: list[float] = []
    sent = [client.send_task("genqueue.generate", kwargs=body)]

    def first_result() -> None:
        sent[0].get(timeout=300, propagate=False)
        first_s.append(time.perf_counter() - started)

    waiter = threading.Thread(target=first_result, daemon=True)
    waiter.start()
    sent += [client.send_task("genqueue.generate", kwargs=body) for _ in range(tasks - 1)]
    failed = 0
    for result in sent:
        try:
            result.get(timeout=300)
        except Exception:  # counted: a failed task is what this bench looks for
            failed += 1
    waiter.join(300)
    return first_s[0], failed


def run_mode(args: argparse.Namespace, redis_url: str, workdir: Path, lifecycle: bool) -> Outcome:
    config = SimulatorConfig(
        latency_s=0.05, pod_id=POD, pod_api_key=KEY,
        pod_cold_start_s=args.cold_start_s, pod_model_load_s=args.model_load_s,
    )  # fmt: skip
    children = Children(workdir)
    client = Celery(broker=redis_url, backend=redis_url, set_as_current=False)
    with serve_in_thread(config) as sim:
        if lifecycle:
            auth = {"Authorization": f"Bearer {KEY}"}
            requests.post(f"{sim.url}/v1/pods/{POD}/stop", headers=auth, timeout=5)
        sampler = Sampler(sim.url)
        thread = threading.Thread(target=sampler.run, daemon=True)
        try:
            _worker(children, redis_url, sim.url, args.idle_stop_s if lifecycle else None)
            thread.start()
            firsts, failed = [], 0
            for index in range(args.bursts):
                first, lost = _burst(client, args.tasks)
                firsts.append(first)
                failed += lost
                print(f"{'lifecycle' if lifecycle else 'always on'}: burst {index + 1} "
                      f"first result {first:.2f}s, {lost} failed", file=sys.stderr)  # fmt: skip
                time.sleep(args.gap_s)
        finally:
            sampler.stop()
            children.stop_all()
            client.close()
    mode = "lifecycle" if lifecycle else "always on"
    return Outcome(
        mode, sampler.running_s, sampler.idle_s, firsts, failed, args.bursts * args.tasks
    )


def _flush(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()


def run(args: argparse.Namespace, redis_url: str, workdir: Path) -> list[Outcome]:
    outcomes = []
    for lifecycle in (False, True):
        _flush(redis_url)
        mode_dir = workdir / ("lifecycle" if lifecycle else "always-on")
        mode_dir.mkdir()
        outcomes.append(run_mode(args, redis_url, mode_dir, lifecycle))
    return outcomes


def report(outcomes: list[Outcome]) -> str:
    lines = ["| | pod running | of it idle | first result, burst 1 | later bursts (median) "
             "| failed |", "|---|---|---|---|---|---|"]  # fmt: skip
    for o in outcomes:
        later = statistics.median(o.first_result_s[1:]) if len(o.first_result_s) > 1 else 0.0
        lines.append(
            f"| {o.mode} | {o.running_s:.1f} s | {o.idle_s:.1f} s | {o.first_result_s[0]:.2f} s "
            f"| {later:.2f} s | {o.failed} of {o.tasks} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--gap-s", type=float, default=20.0)
    parser.add_argument("--idle-stop-s", type=float, default=4.0)
    parser.add_argument("--cold-start-s", type=float, default=2.0)
    parser.add_argument("--model-load-s", type=float, default=3.0)
    parser.add_argument("--redis-url", default=None, help="default: an embedded Redis")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="genqueue-pods-") as tmp:
        if args.redis_url:
            outcomes = run(args, args.redis_url, Path(tmp))
        else:
            with EmbeddedRedis(Path(tmp) / "redis") as redis_server:
                outcomes = run(args, redis_server.url, Path(tmp))
    print(report(outcomes))
    print(json.dumps([o.__dict__ for o in outcomes]))


if __name__ == "__main__":
    main()
