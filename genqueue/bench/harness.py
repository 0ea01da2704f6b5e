"""What every phase works with: the config, Redis, the result watcher, the two workers."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator

import redis
from celery import Celery

from genqueue.bench.config import BenchConfig, BenchError
from genqueue.bench.processes import START_TIMEOUT_S, Children
from genqueue.bench.results import ResultWatcher
from genqueue.bench.simulator_process import SimProcess
from genqueue.bench.workers import BareKind, GenqueueKind, Kind
from worker.settings import Settings

SETTLE_S = 0.5


class Harness:
    """The bench's Redis database, its result watcher and its workers, started and stopped."""

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

    def start_worker(
        self, kind: Kind, sim: SimProcess, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        name = f"{kind.name}-worker"
        proc = self.children.spawn(name, kind.argv(), kind.env(sim.url) | (env or {}))
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

    @contextlib.contextmanager
    def simulator(self, latency_s: float) -> Iterator[SimProcess]:
        sim = SimProcess(self.children, latency_s)
        try:
            yield sim
        finally:
            sim.close()
            self.children.stop(sim.proc)
