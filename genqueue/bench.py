"""``genqueue bench``: genqueue side by side with bare Celery, on this machine.

Phases (``--only`` picks some, all run by default):

``drain``
    ``--tasks`` tasks are enqueued first (a backlog), then ``genqueue worker`` starts with its
    default settings against ``genqueue simulate --latency L``; the backlog is released to it
    once it is ready and the drain is timed until the last result.
``overhead``
    the same drain with a 0 ms simulator: genqueue's own cost per task.
``bare``
    the same drains with bare Celery (:mod:`genqueue.bench_bare`, one gevent process of 500).
``enqueue``
    ``POST /v1/tasks`` from ``--clients`` keep-alive connections against ``genqueue api``, and
    :class:`~api_producer.producers.direct.DirectProducer` (``submit`` and ``submit_many`` of 100).
``latency``
    submit to result visible, one task at a time, 0 ms simulator: genqueue, bare Celery and a
    direct call to the simulator.

Every figure is the median of ``--repeat`` repetitions with their min and max. The table goes
to stdout and, last, one JSON line with every figure; progress goes to stderr. BENCHMARKS.md
explains the method. Every process the bench starts runs in a process group of its own, is
told to stop if the bench dies, and is killed when its phase ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import redis
import requests
from celery import Celery

from genqueue.cli.worker import process_count
from genqueue.embedded_redis import EmbeddedRedis, free_port, redis_answers
from worker import keys
from worker.contract import CELERY_DEFAULT_QUEUE, QUEUE_NAME, GenerationRequest
from worker.errors import GenQueueError
from worker.pipeline.render import PromptRenderer
from worker.settings import Settings

PHASES = ("drain", "overhead", "bare", "enqueue", "latency")
API_KEY = "genqueue-bench-key"
#: What every benchmark task asks for.
REQUEST: dict[str, Any] = {
    "prompt": "How can I make a cake?",
    "system": "You are Dolphin, a helpful AI assistant.",
    "params": {"max_tokens": 16, "seed": 10},
}
#: genqueue/bench_bare.py's task and concurrency (not imported: it builds a Celery app).
BARE_TASK = "bench_bare.complete"
BARE_CONCURRENCY = 500
FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
BATCH = 100
SETTLE_S = 0.5
START_TIMEOUT_S = 60.0
LATENCY_TIMEOUT_S = 30.0
LATENCY_WARMUP = 10
#: RUNPOD_MAX_CONCURRENCY for the benchmark: high enough never to be the bottleneck.
UNCAPPED = "100000"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1
#: The in-flight count at which the peak RSS target applies.
RSS_IN_FLIGHT = 1000
#: A 1-minute load average above this at the start is reported: the figures may be skewed.
BUSY_LOAD = 0.5


class BenchError(GenQueueError):
    """The benchmark cannot go on; the message says why."""

    error_type = "bench_error"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``genqueue bench``."""
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per drain (default 2000)")
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


def resolve_config(args: argparse.Namespace) -> BenchConfig:
    tasks, latency_ms = args.tasks, args.latency_ms
    phases = tuple(args.only or PHASES)
    if args.soak_littles:
        tasks, latency_ms = max(tasks, 4000), 5000.0
        phases = tuple(args.only or ("drain",))
    repeat, enqueue_s, samples = args.repeat, args.enqueue_seconds, args.latency_samples
    if args.quick:
        tasks, repeat, enqueue_s, samples = 50, 1, min(enqueue_s, 2.0), min(samples, 20)
    if tasks < 1 or repeat < 1 or latency_ms < 0 or enqueue_s <= 0 or samples < 1:
        raise BenchError("--tasks, --repeat and --latency-samples must be positive")
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
    )


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name: fields 3 (state) onwards."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie has closed its sockets: it does not)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def tree_cpu_s(root: int) -> float:
    """User plus system CPU seconds of the live processes of ``root``'s tree."""
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLK_TCK


def tree_peak_rss_mb(root: int) -> float:
    """The sum of every process's peak resident set (VmHWM) in ``root``'s tree, in MB."""
    total_kb = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
    return total_kb / 1024


def _death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when the bench dies (Linux)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sigterm = int(signal.SIGTERM)

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, sigterm)

    return set_death_signal


def base_env() -> dict[str, str]:
    """The bench's environment without any genqueue, RunPod, Redis or Celery setting."""
    prefixes = ("GENQUEUE_", "RUNPOD_", "REDIS_URL", "CELERY", "FLOWER_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


class Children:
    """The processes the bench started, each the leader of its own process group."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._procs: list[subprocess.Popen[bytes]] = []
        self._preexec = _death_signal()

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with self.log_path(name).open("ab") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=self.workdir,  # no .env file of the caller's is read
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=self._preexec,
            )
        self._procs.append(proc)
        return proc

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL ``proc``'s process group (its children included); wait until all are gone."""
        tree = process_tree(proc.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in tree) and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)


# --------------------------------------------------------------------------- Redis


def _choose_redis(settings: Settings, children: Children) -> str:
    """``REDIS_URL`` when set, else an embedded Redis of the bench's own (no persistence).

    Not 127.0.0.1:6379 unasked: the bench empties its database between runs, and a shared
    Redis may serve other work (the test suite uses databases 1 to 15).
    """
    if "redis_url" in settings.model_fields_set:
        return settings.redis_url
    embedded = EmbeddedRedis(children.workdir / "redis")
    embedded.data_dir.mkdir(parents=True)
    argv = [*embedded.command(), "--appendonly", "no"]
    proc = children.spawn("redis", argv, base_env())
    deadline = time.monotonic() + 10
    while not redis_answers(embedded.url, 0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            log = children.log_tail("redis")
            raise BenchError(f"the embedded redis-server did not start:\n{log}")
        time.sleep(0.05)
    progress(f"REDIS_URL is not set: using an embedded redis-server on port {embedded.port}")
    return embedded.url


def _redis_usage(client: redis.Redis) -> tuple[float, int]:
    """The Redis server's CPU seconds and commands processed so far (all clients)."""
    info = client.info("cpu") | client.info("stats")
    cpu_s = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return cpu_s, int(info["total_commands_processed"])


class ResultWatcher:
    """Sees every final task state as Celery's Redis backend publishes it, with its time."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe(keys.celery_result("*"))
        self._pubsub.get_message(timeout=1.0)  # the subscription is in place
        self._cond = threading.Condition()
        self._done: dict[str, tuple[float, str]] = {}
        self._expected: set[str] = set()
        self._expected_done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-results", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.1)
            except (redis.RedisError, OSError):
                time.sleep(0.1)
                continue
            if message is not None:
                self._record(message, time.monotonic())

    def _record(self, message: dict[str, Any], seen: float) -> None:
        try:
            state = json.loads(message["data"]).get("status")
        except (ValueError, TypeError, AttributeError):
            return
        if state not in FINAL_STATES:
            return
        task_id = message["channel"].decode().removeprefix(keys.CELERY_RESULT_PREFIX)
        with self._cond:
            if task_id in self._done:
                return
            self._done[task_id] = (seen, state)
            if task_id in self._expected:
                self._expected_done += 1
            self._cond.notify_all()

    def begin(self, task_ids: list[str]) -> None:
        """Forget what was seen; from now on count the final states of ``task_ids``."""
        with self._cond:
            self._done.clear()
            self._expected = set(task_ids)
            self._expected_done = 0

    def wait_all(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: self._expected_done >= len(self._expected), timeout_s
            )

    def finish_times(self) -> list[float]:
        with self._cond:
            return sorted(t for task_id, (t, _) in self._done.items() if task_id in self._expected)

    def wait_for(self, task_id: str, timeout_s: float) -> float | None:
        """When ``task_id``'s final state was seen (``None`` after ``timeout_s``)."""
        with self._cond:
            if self._cond.wait_for(lambda: task_id in self._done, timeout_s):
                return self._done[task_id][0]
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with contextlib.suppress(Exception):
            self._pubsub.close()
        self._client.close()


# --------------------------------------------------------------------------- simulator


class SimProcess:
    """``genqueue simulate --latency L`` in a child process."""

    def __init__(self, children: Children, latency_s: float) -> None:
        self.latency_s = latency_s
        self.name = f"simulator-{latency_s * 1000:g}ms"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._session = requests.Session()
        argv = [sys.executable, "-m", "genqueue", "simulate", "--port", str(port)]
        self.proc = children.spawn(self.name, [*argv, "--latency", repr(latency_s)], base_env())
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(requests.RequestException):
                if self._session.get(f"{self.url}/_sim/stats", timeout=1).ok:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the simulator did not start:\n{children.log_tail(self.name)}")
            time.sleep(0.1)

    def reset(self) -> None:
        self._session.post(f"{self.url}/_sim/reset", timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = self._session.get(f"{self.url}/_sim/stats", timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def cpu_s(self) -> float:
        return tree_cpu_s(self.proc.pid)

    def close(self) -> None:
        self._session.close()


# --------------------------------------------------------------------------- the two workers


class GenqueueKind:
    """``genqueue worker`` with its defaults, fed by the direct producer."""

    name = "genqueue"
    queue = QUEUE_NAME

    def __init__(self, settings: Settings) -> None:
        defaults = Settings.model_construct()  # the defaults, not this process's environment
        self.processes = process_count(defaults)
        self.cap = self.processes * defaults.worker_concurrency
        self._settings = settings
        self._request = GenerationRequest.model_validate(REQUEST)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "genqueue", "worker"]

    def env(self, endpoint_url: str) -> dict[str, str]:
        return base_env() | {
            "REDIS_URL": self._settings.redis_url,
            "RUNPOD_ENDPOINT_URL": endpoint_url,
            "RUNPOD_MAX_CONCURRENCY": UNCAPPED,
        }

    def enqueue(self, count: int) -> list[str]:
        from api_producer.producers.direct import DirectProducer

        producer = DirectProducer(self._settings)
        task_ids: list[str] = []
        try:
            while len(task_ids) < count:
                batch = [self._request] * min(BATCH, count - len(task_ids))
                task_ids += producer.submit_many(batch).task_ids
        finally:
            producer.close()
        return task_ids

    @contextlib.contextmanager
    def submitter(self) -> Iterator[Callable[[], str]]:
        from api_producer.producers.direct import DirectProducer

        producer = DirectProducer(self._settings)
        try:
            yield lambda: producer.submit(self._request)
        finally:
            producer.close()


class BareKind:
    """``celery -A genqueue.bench_bare worker -P gevent -c 500``, fed by plain ``send_task``."""

    name = "bare"
    queue = CELERY_DEFAULT_QUEUE
    processes = 1
    cap = BARE_CONCURRENCY

    def __init__(self, settings: Settings) -> None:
        self._url = settings.redis_url
        request = GenerationRequest.model_validate(REQUEST)
        prompt = PromptRenderer(None).render(request)
        params = request.params.model_dump(mode="json", exclude_none=True)
        self._kwargs: dict[str, Any] = {"prompt": prompt, "params": params}
        #: What the bare task POSTs (and what the direct call of the latency phase sends).
        self.completion_body: dict[str, Any] = {**params, "prompt": prompt}

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "genqueue.bench_bare", "worker",
            "-P", "gevent", "-c", str(self.cap),
        ]  # fmt: skip

    def env(self, endpoint_url: str) -> dict[str, str]:
        return base_env() | {"REDIS_URL": self._url, "RUNPOD_ENDPOINT_URL": endpoint_url}

    @contextlib.contextmanager
    def submitter(self) -> Iterator[Callable[[], str]]:
        app = Celery("genqueue-bench-client", broker=self._url, set_as_current=False)
        try:
            yield lambda: str(app.send_task(BARE_TASK, kwargs=self._kwargs).id)
        finally:
            app.close()

    def enqueue(self, count: int) -> list[str]:
        with self.submitter() as submit:
            return [submit() for _ in range(count)]


Kind = GenqueueKind | BareKind


# --------------------------------------------------------------------------- figures


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


def summarize(values: list[float | None]) -> dict[str, Any]:
    """Median, min and max of the repetitions (and the repetitions themselves)."""
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "runs": values}
    return {
        "median": _round(statistics.median(present)),
        "min": _round(min(present)),
        "max": _round(max(present)),
        "runs": [_round(v) for v in values],
    }


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile."""
    ordered = sorted(samples)
    index = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def steady_rate(times: list[float]) -> float | None:
    """Completions per second between the 10th and the 90th percentile of the finish times:
    the drain without its ramp-up and its tail."""
    low, high = len(times) // 10, len(times) - 1 - len(times) // 10
    if high - low < 2 or times[high] <= times[low]:
        return None
    return (high - low) / (times[high] - times[low])


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


# --------------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, cfg: BenchConfig, url: str, children: Children, settings: Settings):
        self.cfg = cfg
        self.url = url
        self.children = children
        self.settings = settings.model_copy(update={"redis_url": url})
        self.redis = redis.Redis.from_url(url)
        self._prepare_db()
        self.watcher = ResultWatcher(url)
        self.genqueue = GenqueueKind(self.settings)
        self.bare = BareKind(self.settings)

    def _prepare_db(self) -> None:
        size = self.redis.dbsize()
        if size and not self.cfg.flush:
            raise BenchError(
                f"the bench's Redis database holds {size} keys and the bench empties it: point "
                "REDIS_URL at an empty database (e.g. redis://host:6379/14) or pass --flush"
            )
        self.redis.flushdb()

    def close(self) -> None:
        self.watcher.close()
        with contextlib.suppress(redis.RedisError):
            self.redis.flushdb()
        self.redis.close()

    # ---- workers

    def start_worker(self, kind: Kind, sim: SimProcess) -> subprocess.Popen[bytes]:
        name = f"{kind.name}-worker"
        proc = self.children.spawn(name, kind.argv(), kind.env(sim.url))
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._ping(kind.processes) < kind.processes:
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop_worker(proc)
                raise BenchError(f"the {name} did not start:\n{self.children.log_tail(name)}")
        time.sleep(SETTLE_S)
        return proc

    def stop_worker(self, proc: subprocess.Popen[bytes]) -> None:
        """Kill the worker, then wait until Redis has noticed: a BRPOP still registered for a
        dead connection would pop (and lose) the next message pushed."""
        self.children.stop(proc)
        db = str(self.redis.connection_pool.connection_kwargs.get("db", 0))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                clients = self.redis.client_list()
            except redis.ResponseError:  # CLIENT disabled (some managed Redis): just wait
                time.sleep(1.0)
                return
            if not any(c.get("db") == db and "b" in c.get("flags", "") for c in clients):
                return
            time.sleep(0.05)

    def _ping(self, expected: int) -> int:
        # A new app each time: after FLUSHDB an old connection believes its reply queue exists.
        app = Celery("genqueue-bench-control", broker=self.url, set_as_current=False)
        try:
            return len(app.control.ping(timeout=1.0, limit=expected) or [])
        except Exception:
            time.sleep(0.2)
            return 0
        finally:
            app.close()

    # ---- drains

    def _hold_queues(self, kind: Kind, count: int) -> list[bytes]:
        """Move the backlog aside (RENAME), so the worker starts idle; check it is all there."""
        queues = [k for k in self.redis.scan_iter(count=1000) if self.redis.type(k) == b"list"]
        total = sum(int(self.redis.llen(q)) for q in queues)
        stray = [q for q in queues if not q.startswith(kind.queue.encode())]
        if total != count or stray:
            raise BenchError(f"{total} of {count} messages in queues {queues!r}")
        pipe = self.redis.pipeline(transaction=True)
        for queue in queues:
            pipe.rename(queue, keys.bench_held(queue))
        pipe.execute()
        return queues

    def _release(self, queues: list[bytes]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for queue in queues:
            pipe.rename(keys.bench_held(queue), queue)
        pipe.execute()

    def _count_results(self, task_ids: list[str]) -> tuple[int, int]:
        succeeded = failed = 0
        for start in range(0, len(task_ids), 500):
            result_keys = [keys.celery_result(t) for t in task_ids[start : start + 500]]
            for raw in self.redis.mget(result_keys):
                state = json.loads(raw).get("status") if raw else None
                succeeded += state == "SUCCESS"
                failed += state in ("FAILURE", "REVOKED")
        return succeeded, failed

    def drain_once(self, kind: Kind, sim: SimProcess) -> dict[str, Any]:
        self.redis.flushdb()
        task_ids = kind.enqueue(self.cfg.tasks)
        queues = self._hold_queues(kind, self.cfg.tasks)
        sim.reset()
        worker = self.start_worker(kind, sim)
        try:
            return self._measure_drain(sim, worker, task_ids, queues)
        finally:
            self.stop_worker(worker)

    def _measure_drain(
        self,
        sim: SimProcess,
        worker: subprocess.Popen[bytes],
        task_ids: list[str],
        queues: list[bytes],
    ) -> dict[str, Any]:
        self.watcher.begin(task_ids)
        cpu0, sim0, redis0 = tree_cpu_s(worker.pid), sim.cpu_s(), _redis_usage(self.redis)
        released = time.monotonic()
        self._release(queues)
        finished = self.watcher.wait_all(self.cfg.drain_timeout_s)
        cpu1, sim1, redis1 = tree_cpu_s(worker.pid), sim.cpu_s(), _redis_usage(self.redis)
        rss_mb = tree_peak_rss_mb(worker.pid)
        times = self.watcher.finish_times()
        stats = sim.stats()
        succeeded, failed = self._count_results(task_ids)
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
            "redis_cpu_ms_per_task": (redis1[0] - redis0[0]) * 1000 / done,
            "redis_commands_per_task": (redis1[1] - redis0[1]) / done,
            "peak_rss_mb": rss_mb,
            "simulator_max_in_flight": stats.get("max_in_flight"),
            "simulator_calls": stats.get("calls"),
        }

    def run_drains(self, sim: SimProcess, kinds: list[Kind]) -> dict[str, dict[str, Any]]:
        runs: dict[str, list[dict[str, Any]]] = {kind.name: [] for kind in kinds}
        label = f"drain of {self.cfg.tasks} at {sim.latency_s * 1000:g} ms"
        for rep in range(self.cfg.repeat):
            for kind in kinds:
                run = self.drain_once(kind, sim)
                runs[kind.name].append(run)
                progress(
                    f"{label}, {kind.name} {rep + 1}/{self.cfg.repeat}: "
                    f"{run['completed']} done, {run['throughput_per_s'] or 0:.0f}/s, "
                    f"{run['cpu_ms_per_task']:.2f} ms CPU/task, "
                    f"{run['simulator_max_in_flight']} max in flight, "
                    f"{run['peak_rss_mb']:.0f} MB"
                )
        return {
            kind.name: self._drain_figures(kind, sim.latency_s, runs[kind.name]) for kind in kinds
        }

    def _drain_figures(
        self, kind: Kind, latency_s: float, runs: list[dict[str, Any]]
    ) -> dict[str, Any]:
        limit = kind.cap / latency_s if latency_s > 0 else None
        figures: dict[str, Any] = {
            "worker": kind.name,
            "latency_ms": latency_s * 1000,
            "tasks": self.cfg.tasks,
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
            "redis_cpu_ms_per_task",
            "redis_commands_per_task",
            "peak_rss_mb",
            "simulator_max_in_flight",
        ):
            figures[key] = summarize([run[key] for run in runs])
        figures["littles_ratio"] = summarize(
            [_ratio(run["throughput_per_s"], limit) for run in runs]
        )
        figures["steady_littles_ratio"] = summarize(
            [_ratio(run["steady_throughput_per_s"], limit) for run in runs]
        )
        return figures

    # ---- enqueue

    def run_enqueue(self) -> dict[str, Any]:
        self.redis.flushdb()
        port = free_port()
        api = self._start_api(port)
        try:
            asyncio.run(api_load(port, self.cfg.clients, min(1.0, self.cfg.enqueue_s)))  # warm
            api_runs = [self._api_run(api, port, rep) for rep in range(self.cfg.repeat)]
        finally:
            self.children.stop(api)
        direct = {batch: self._direct_runs(batch) for batch in (1, BATCH)}
        self.redis.flushdb()
        return {
            "api": {
                "clients": self.cfg.clients,
                "seconds": self.cfg.enqueue_s,
                "requests": [run["requests"] for run in api_runs],
                "errors": [run["errors"] for run in api_runs],
                "requests_per_s": summarize([run["requests_per_s"] for run in api_runs]),
                "p50_ms": summarize([run["p50_ms"] for run in api_runs]),
                "p99_ms": summarize([run["p99_ms"] for run in api_runs]),
                "api_cpu_ms_per_request": summarize([run["api_cpu_ms"] for run in api_runs]),
                "client_cpu_ms_per_request": summarize([run["client_cpu_ms"] for run in api_runs]),
            },
            "direct_submit_per_s": summarize(direct[1]),
            "direct_submit_many_per_s": summarize(direct[BATCH]),
        }

    def _api_run(self, api: subprocess.Popen[bytes], port: int, rep: int) -> dict[str, Any]:
        """One timed API run, with the CPU the server and this load generator spent."""
        server0, client0 = tree_cpu_s(api.pid), time.process_time()
        run = asyncio.run(api_load(port, self.cfg.clients, self.cfg.enqueue_s))
        done = max(run["requests"], 1)
        run["api_cpu_ms"] = (tree_cpu_s(api.pid) - server0) * 1000 / done
        run["client_cpu_ms"] = (time.process_time() - client0) * 1000 / done
        progress(
            f"API enqueue {rep + 1}/{self.cfg.repeat}: {run['requests_per_s']:.0f}/s, "
            f"p50 {run['p50_ms']:.1f} ms, p99 {run['p99_ms']:.1f} ms, {run['errors']} errors, "
            f"server {run['api_cpu_ms']:.2f} / client {run['client_cpu_ms']:.2f} ms CPU per request"
        )
        return run

    def _start_api(self, port: int) -> subprocess.Popen[bytes]:
        env = base_env() | {"REDIS_URL": self.url, "GENQUEUE_API_KEYS": API_KEY}
        argv = [sys.executable, "-m", "genqueue", "api", "--port", str(port)]
        proc = self.children.spawn("api", argv, env)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).ok:
                    return proc
            if proc.poll() is not None or time.monotonic() > deadline:
                self.children.stop(proc)
                raise BenchError(f"the API did not start:\n{self.children.log_tail('api')}")
            time.sleep(0.1)

    def _direct_runs(self, batch: int) -> list[float | None]:
        from api_producer.producers.direct import DirectProducer

        request = GenerationRequest.model_validate(REQUEST)
        rates: list[float | None] = []
        for rep in range(self.cfg.repeat):
            self.redis.flushdb()
            producer = DirectProducer(self.settings)
            try:
                producer.submit_many([request] * batch)  # connect and declare first
                count, started = 0, time.perf_counter()
                deadline = started + self.cfg.enqueue_s
                while time.perf_counter() < deadline:
                    count += len(producer.submit_many([request] * batch).task_ids)
                rates.append(count / (time.perf_counter() - started))
            finally:
                producer.close()
            progress(f"direct producer, batches of {batch}, {rep + 1}: {rates[-1]:.0f}/s")
        return rates

    # ---- latency

    def run_latency(self, sim: SimProcess) -> dict[str, Any]:
        figures: dict[str, Any] = {"samples": self.cfg.latency_samples}
        figures["direct_call"] = self._latency_figures(
            [self._direct_call_latency(sim) for _ in range(self.cfg.repeat)]
        )
        for kind in (self.genqueue, self.bare):
            self.redis.flushdb()
            worker = self.start_worker(kind, sim)
            try:
                with kind.submitter() as submit:
                    self._sequential(submit, LATENCY_WARMUP)
                    runs = [self._sequential(submit) for _ in range(self.cfg.repeat)]
            finally:
                self.stop_worker(worker)
            figures[kind.name] = self._latency_figures(runs)
            progress(
                f"latency {kind.name}: p50 {figures[kind.name]['p50_ms']['median']} ms, "
                f"p99 {figures[kind.name]['p99_ms']['median']} ms"
            )
        self.redis.flushdb()
        return figures

    def _sequential(self, submit: Callable[[], str], count: int | None = None) -> list[float]:
        samples = []
        self.watcher.begin([])
        for _ in range(count or self.cfg.latency_samples):
            started = time.monotonic()
            task_id = submit()
            seen = self.watcher.wait_for(task_id, LATENCY_TIMEOUT_S)
            if seen is None:
                raise BenchError(f"task {task_id} had no result after {LATENCY_TIMEOUT_S:g}s")
            samples.append(seen - started)
        return samples

    def _direct_call_latency(self, sim: SimProcess) -> list[float]:
        body = self.bare.completion_body
        samples = []
        with requests.Session() as session:
            for _ in range(self.cfg.latency_samples):
                started = time.monotonic()
                session.post(f"{sim.url}/v1/completions", json=body, timeout=10).raise_for_status()
                samples.append(time.monotonic() - started)
        return samples

    @staticmethod
    def _latency_figures(runs: list[list[float]]) -> dict[str, Any]:
        return {
            "p50_ms": summarize([percentile(run, 50) * 1000 for run in runs]),
            "p99_ms": summarize([percentile(run, 99) * 1000 for run in runs]),
            "mean_ms": summarize([statistics.fmean(run) * 1000 for run in runs]),
        }

    # ---- the whole run

    def run(self) -> dict[str, Any]:
        phases = set(self.cfg.phases)
        results: dict[str, Any] = {}
        if "enqueue" in phases:
            results["enqueue"] = self.run_enqueue()
        bare_alone = "bare" in phases and not phases & {"drain", "overhead"}
        io_kinds = self._kinds("drain" in phases, bare_alone or {"drain", "bare"} <= phases)
        zero_kinds = self._kinds("overhead" in phases, bare_alone or {"overhead", "bare"} <= phases)
        if io_kinds:
            with self._simulator(self.cfg.latency_s) as sim:
                found = self.run_drains(sim, io_kinds)
            results |= {"drain": found.get("genqueue"), "bare_drain": found.get("bare")}
        if zero_kinds or "latency" in phases:
            with self._simulator(0.0) as sim:
                if zero_kinds:
                    found = self.run_drains(sim, zero_kinds)
                    results["overhead"] = found.get("genqueue")
                    results["bare_overhead"] = found.get("bare")
                if "latency" in phases:
                    results["latency"] = self.run_latency(sim)
        return {key: value for key, value in results.items() if value is not None}

    def _kinds(self, genqueue: bool, bare: bool) -> list[Kind]:
        kinds: list[Kind] = []
        if genqueue:
            kinds.append(self.genqueue)
        if bare:
            kinds.append(self.bare)
        return kinds

    @contextlib.contextmanager
    def _simulator(self, latency_s: float) -> Iterator[SimProcess]:
        sim = SimProcess(self.children, latency_s)
        try:
            yield sim
        finally:
            sim.close()
            self.children.stop(sim.proc)


# --------------------------------------------------------------------------- API load


def _post_bytes(port: int) -> bytes:
    body = json.dumps(REQUEST).encode()
    head = (
        f"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_status(reader: asyncio.StreamReader) -> int:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return int(head[0].split(" ", 2)[1])


async def _api_client(port: int, deadline: float, samples: list[float], errors: list[str]) -> None:
    """One keep-alive connection posting one task after another until ``deadline``."""
    payload = _post_bytes(port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as err:
        errors.append(type(err).__name__)
        return
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(payload)
            status = await _read_status(reader)
            if status == 202:
                samples.append(time.perf_counter() - started)
            else:
                errors.append(str(status))
    except (OSError, asyncio.IncompleteReadError, ValueError) as err:
        errors.append(type(err).__name__)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def api_load(port: int, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` connections posting to ``/v1/tasks`` for ``seconds``: rate and latency."""
    samples: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    await asyncio.gather(
        *(_api_client(port, started + seconds, samples, errors) for _ in range(clients))
    )
    elapsed = time.perf_counter() - started
    return {
        "requests": len(samples),
        "errors": len(errors),
        "requests_per_s": len(samples) / elapsed,
        "p50_ms": percentile(samples, 50) * 1000 if samples else None,
        "p99_ms": percentile(samples, 99) * 1000 if samples else None,
    }


# --------------------------------------------------------------------------- report


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(client: redis.Redis | None = None) -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    for package in ("genqueue", "celery", "kombu", "redis", "gevent", "pydantic", "requests"):
        info[package if package != "redis" else "redis-py"] = _version(package)
    if client is not None:
        with contextlib.suppress(redis.RedisError):
            info["redis_server"] = client.info("server").get("redis_version")
    return info


def _median(results: dict[str, Any], *path: str) -> float | None:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node.get("median") if isinstance(node, dict) else None


def _paired(results: dict[str, Any], a: str, b: str, key: str) -> dict[str, Any] | None:
    """genqueue/bare of ``key``, repetition by repetition (they ran interleaved)."""
    if a not in results or b not in results:
        return None
    runs_a, runs_b = results[a][key]["runs"], results[b][key]["runs"]
    return summarize([_ratio(x, y) for x, y in zip(runs_a, runs_b, strict=False)])


def ratios(results: dict[str, Any]) -> dict[str, Any]:
    found = {
        "drain_throughput": _paired(results, "drain", "bare_drain", "throughput_per_s"),
        "drain_cpu_per_task": _paired(results, "drain", "bare_drain", "cpu_ms_per_task"),
        "drain_peak_rss": _paired(results, "drain", "bare_drain", "peak_rss_mb"),
        "overhead_throughput": _paired(results, "overhead", "bare_overhead", "throughput_per_s"),
        "overhead_cpu_per_task": _paired(results, "overhead", "bare_overhead", "cpu_ms_per_task"),
        "overhead_peak_rss": _paired(results, "overhead", "bare_overhead", "peak_rss_mb"),
    }
    return {key: value for key, value in found.items() if value is not None}


def _target(
    name: str, measured: float | None, limit: float, at_least: bool, note: str = ""
) -> dict[str, Any]:
    met = None if measured is None else (measured >= limit if at_least else measured <= limit)
    return {
        "target": name,
        "measured": _round(measured),
        "limit": limit,
        "met": met,
        "note": note,
    }


def targets(cfg: BenchConfig, results: dict[str, Any], found: dict[str, Any]) -> list[Any]:
    drain_note = f"L={cfg.latency_s * 1000:g} ms, {cfg.tasks} tasks"
    littles = _median(results, "drain", "steady_littles_ratio") if cfg.latency_s >= 5 else None
    whole = _median(results, "drain", "littles_ratio")
    in_flight = _median(results, "drain", "simulator_max_in_flight") or 0
    rss = _median(results, "drain", "peak_rss_mb") if in_flight >= RSS_IN_FLIGHT else None
    rss_note = f"{drain_note}, {in_flight:g} in flight"
    if rss is None and in_flight:
        rss_note += f" (peak {_median(results, 'drain', 'peak_rss_mb')} MB): run --soak-littles"
    api = ("enqueue", "api")
    # The throughput target is set at L = 500 ms (a soak at 5 s compares other figures).
    at_500_ms = cfg.latency_s < 5
    drain_ratio = _median(found, "drain_throughput") if at_500_ms else None
    return [
        _target("I/O drain >= 2.5x bare Celery throughput", drain_ratio, 2.5, True,
                drain_note if at_500_ms else "set at L=500 ms: run without --soak-littles"),
        _target("worker CPU per task at 0 ms <= 0.5x bare", _median(found, "overhead_cpu_per_task"),
                0.5, False),
        _target("L=5 s, 1000 in flight: steady rate >= 0.9 of Little's law", littles, 0.9, True,
                f"{drain_note}; whole drain {whole}" if littles is not None
                else "run with --soak-littles"),
        _target("API enqueue >= 1000/s (32 clients)", _median(results, *api, "requests_per_s"),
                1000, True),
        _target("API enqueue p99 <= 25 ms", _median(results, *api, "p99_ms"), 25, False),
        _target("direct producer submit() >= 2000/s",
                _median(results, "enqueue", "direct_submit_per_s"), 2000, True),
        _target("added latency p50 <= 10 ms", _median(results, "latency", "genqueue", "p50_ms"),
                10, False, "submit to result seen, 0 ms simulator"),
        _target("added latency p99 <= 50 ms", _median(results, "latency", "genqueue", "p99_ms"),
                50, False, "submit to result seen, 0 ms simulator"),
        _target("worker peak RSS <= 250 MB (1000 in flight)",
                rss, 250, False, rss_note),
    ]  # fmt: skip


def _fmt(summary: Any, digits: int = 0) -> str:
    if not isinstance(summary, dict) or summary.get("median") is None:
        return "-"
    median, low, high = summary["median"], summary["min"], summary["max"]
    if low == high:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def _drain_rows(results: dict[str, Any], found: dict[str, Any], a: str, b: str, tag: str) -> list:
    ga, gb = results.get(a, {}), results.get(b, {})
    first = ga or gb
    kind = "I/O" if tag == "drain" else "overhead"
    title = f"{kind} drain, L={first['latency_ms']:g} ms, {first['tasks']} tasks"
    return [
        (f"{title}: tasks/s", _fmt(ga.get("throughput_per_s")),
         _fmt(gb.get("throughput_per_s")), _fmt(found.get(f"{tag}_throughput"), 2)),
        ("  steady rate (10th-90th percentile of finishes), tasks/s",
         _fmt(ga.get("steady_throughput_per_s")), _fmt(gb.get("steady_throughput_per_s")), ""),
        ("  Little's-law limit (cap/L), tasks/s", _fmt({"median": ga.get("littles_limit_per_s"),
         "min": 0, "max": 0}) if ga.get("littles_limit_per_s") else "-",
         _fmt({"median": gb.get("littles_limit_per_s"), "min": 0, "max": 0})
         if gb.get("littles_limit_per_s") else "-", ""),
        ("  throughput / Little's limit: whole drain, steady",
         f"{_fmt(ga.get('littles_ratio'), 2)}, {_fmt(ga.get('steady_littles_ratio'), 2)}"
         if ga.get("littles_limit_per_s") else "-",
         f"{_fmt(gb.get('littles_ratio'), 2)}, {_fmt(gb.get('steady_littles_ratio'), 2)}"
         if gb.get("littles_limit_per_s") else "-", ""),
        ("  most requests in flight at the simulator", _fmt(ga.get("simulator_max_in_flight")),
         _fmt(gb.get("simulator_max_in_flight")), ""),
        ("  worker CPU per task, ms", _fmt(ga.get("cpu_ms_per_task"), 2),
         _fmt(gb.get("cpu_ms_per_task"), 2), _fmt(found.get(f"{tag}_cpu_per_task"), 2)),
        ("  worker peak RSS (VmHWM, tree), MB", _fmt(ga.get("peak_rss_mb")),
         _fmt(gb.get("peak_rss_mb")), _fmt(found.get(f"{tag}_peak_rss"), 2)),
        ("  Redis commands per task", _fmt(ga.get("redis_commands_per_task"), 1),
         _fmt(gb.get("redis_commands_per_task"), 1), ""),
        ("  simulator / Redis CPU per task, ms",
         f"{_fmt(ga.get('simulator_cpu_ms_per_task'), 2)} / "
         f"{_fmt(ga.get('redis_cpu_ms_per_task'), 2)}" if ga else "-",
         f"{_fmt(gb.get('simulator_cpu_ms_per_task'), 2)} / "
         f"{_fmt(gb.get('redis_cpu_ms_per_task'), 2)}" if gb else "-", ""),
    ]  # fmt: skip


def _other_rows(results: dict[str, Any]) -> list:
    rows: list[tuple[str, str, str, str]] = []
    enqueue = results.get("enqueue")
    if enqueue:
        api = enqueue["api"]
        rows += [
            (f"API POST /v1/tasks, {api['clients']} clients, req/s",
             _fmt(api["requests_per_s"]), "", ""),
            ("  API p50 / p99, ms", f"{_fmt(api['p50_ms'], 1)} / {_fmt(api['p99_ms'], 1)}", "", ""),
            ("  CPU per request: API server / load generator, ms",
             f"{_fmt(api['api_cpu_ms_per_request'], 2)} / "
             f"{_fmt(api['client_cpu_ms_per_request'], 2)}", "", ""),
            ("direct producer submit(), tasks/s", _fmt(enqueue["direct_submit_per_s"]), "", ""),
            (f"direct producer submit_many({BATCH}), tasks/s",
             _fmt(enqueue["direct_submit_many_per_s"]), "", ""),
        ]  # fmt: skip
    latency = results.get("latency")
    if latency:
        for label, key in (("p50", "p50_ms"), ("p99", "p99_ms")):
            rows.append(
                (f"submit -> result {label}, ms (direct call: "
                 f"{_fmt(latency['direct_call'][key], 2)})",
                 _fmt(latency["genqueue"][key], 1), _fmt(latency["bare"][key], 1), "")
            )  # fmt: skip
    return rows


def render_table(report: dict[str, Any]) -> str:
    results, found = report["results"], report["ratios"]
    rows: list[tuple[str, str, str, str]] = [("figure", "genqueue", "bare Celery", "ratio")]
    if "drain" in results or "bare_drain" in results:
        rows += _drain_rows(results, found, "drain", "bare_drain", "drain")
    if "overhead" in results or "bare_overhead" in results:
        rows += _drain_rows(results, found, "overhead", "bare_overhead", "overhead")
    rows += _other_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("targets (median of the repetitions):")
    for target in report["targets"]:
        mark = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        note = f" [{target['note']}]" if target["note"] else ""
        lines.append(f"  {mark:>12}  {target['target']}: {target['measured']}{note}")
    return "\n".join(lines)


def build_report(
    cfg: BenchConfig, results: dict[str, Any], machine: dict[str, Any]
) -> dict[str, Any]:
    found = ratios(results)
    return {
        "bench": "genqueue",
        "command": "genqueue bench " + " ".join(sys.argv[2:] if len(sys.argv) > 1 else []),
        "machine": machine,
        "params": {
            "tasks": cfg.tasks,
            "latency_ms": cfg.latency_s * 1000,
            "repeat": cfg.repeat,
            "phases": list(cfg.phases),
            "clients": cfg.clients,
            "enqueue_seconds": cfg.enqueue_s,
            "latency_samples": cfg.latency_samples,
            "quick": cfg.quick,
        },
        "results": results,
        "ratios": found,
        "targets": targets(cfg, results, found),
    }


# --------------------------------------------------------------------------- entry point


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
    url = _choose_redis(settings, children)
    bench = Bench(cfg, url, children, settings)
    try:
        results = bench.run()
        machine = machine_info(bench.redis) | {"loadavg_at_start": round(load, 2)}
    finally:
        bench.close()
    return build_report(cfg, results, machine)
