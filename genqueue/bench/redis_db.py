"""The bench's Redis: the one ``REDIS_URL`` names or an embedded one, and its CPU and commands."""

from __future__ import annotations

import time

import redis

from genqueue.bench.config import BenchError
from genqueue.bench.processes import Children, base_env
from genqueue.bench.progress import progress
from genqueue.embedded_redis import EmbeddedRedis, redis_answers
from worker.settings import Settings


def choose_redis(settings: Settings, children: Children) -> str:
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


def redis_usage(client: redis.Redis) -> tuple[float, int]:
    """The Redis server's CPU seconds and commands processed so far (all clients)."""
    info = client.info("cpu") | client.info("stats")
    cpu_s = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return cpu_s, int(info["total_commands_processed"])
