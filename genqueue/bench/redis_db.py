"""The bench's Redis: the one ``REDIS_URL`` names or an embedded one, and its CPU and commands."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

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


TOP_COMMANDS = 12


@dataclass(frozen=True)
class RedisUsage:
    """The Redis server's CPU seconds and calls per command so far (all clients; the commands
    a Lua script runs count as calls of their own, beside the script's ``EVALSHA``)."""

    cpu_s: float
    calls: dict[str, int]

    @property
    def commands(self) -> int:
        return sum(self.calls.values())


def redis_usage(client: redis.Redis) -> RedisUsage:
    cpu = client.info("cpu")
    stats = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}
    return RedisUsage(float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), calls)


def redis_per_task(
    enqueued: tuple[RedisUsage, RedisUsage], drained: tuple[RedisUsage, RedisUsage], tasks: int
) -> dict[str, Any]:
    """Redis's cost of ``tasks`` tasks, enqueued (the producer) and drained (the worker): CPU in
    µs and commands per task, the rate at which their sum fills one core, and the
    ``TOP_COMMANDS`` most called commands per task of both. The ``INFO`` reads between the
    snapshots count too (a handful of commands per window)."""
    (e0, e1), (d0, d1) = enqueued, drained
    enqueue_us = (e1.cpu_s - e0.cpu_s) * 1e6 / tasks
    drain_us = (d1.cpu_s - d0.cpu_s) * 1e6 / tasks
    calls: dict[str, int] = {}
    for before, after in enqueued, drained:
        for name, n in after.calls.items():
            calls[name] = calls.get(name, 0) + n - before.calls.get(name, 0)
    top = sorted((item for item in calls.items() if item[1] > 0), key=lambda i: -i[1])
    total_us = enqueue_us + drain_us
    return {
        "redis_cpu_us_per_task": total_us,
        "redis_enqueue_cpu_us_per_task": enqueue_us,
        "redis_drain_cpu_us_per_task": drain_us,
        "redis_commands_per_task": sum(calls.values()) / tasks,
        "redis_enqueue_commands_per_task": (e1.commands - e0.commands) / tasks,
        "redis_core_saturates_at_per_s": 1e6 / total_us if total_us > 0 else None,
        "redis_top_commands_per_task": {name: n / tasks for name, n in top[:TOP_COMMANDS]},
    }
