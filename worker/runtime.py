"""The resources of one worker process, built once from the settings, on first use."""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass

import redis

from worker import keys
from worker.backoff import RetryPolicy
from worker.endpoint import CompletionClient, EndpointConfig
from worker.errors import SettingsError
from worker.generation import Generation
from worker.lease import ConcurrencyLease
from worker.prompts import PromptRenderer
from worker.settings import Settings, env_name

#: Connections beyond the task concurrency, for the heartbeat and bookkeeping.
SPARE_CONNECTIONS = 16


@dataclass
class WorkerRuntime:
    redis: redis.Redis
    client: CompletionClient
    lease: ConcurrencyLease
    generation: Generation

    def close(self) -> None:
        self.lease.close()
        self.client.close()
        self.redis.close()


def redis_client(settings: Settings, max_connections: int) -> redis.Redis:
    """A client whose pool waits for a free connection instead of failing past its size."""
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections,
        timeout=30,
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=25,
        retry_on_timeout=True,
    )
    return redis.Redis(connection_pool=pool)


def endpoint_id(completions_url: str) -> str:
    """A short, stable name for the endpoint: the lease key must not reveal its URL."""
    return hashlib.sha256(completions_url.encode()).hexdigest()[:16]


def build_runtime(settings: Settings) -> WorkerRuntime:
    url = settings.completions_url
    if url is None:
        raise SettingsError(f"{env_name('runpod_endpoint_url')} is not set: the worker needs it")
    concurrency = settings.worker_concurrency
    client = redis_client(settings, concurrency + SPARE_CONNECTIONS)
    api_key = settings.runpod_api_key.get_secret_value() if settings.runpod_api_key else None
    endpoint = CompletionClient(
        EndpointConfig(
            completions_url=url,
            api_key=api_key,
            model=settings.endpoint_model,
            connect_timeout_s=settings.endpoint_connect_timeout_s,
            read_timeout_s=settings.endpoint_read_timeout_s,
            pool_size=concurrency,
        )
    )
    lease = ConcurrencyLease(
        client, keys.lease(endpoint_id(url)), limit=settings.runpod_max_concurrency
    )
    generation = Generation(
        redis_client=client,
        renderer=PromptRenderer(settings.templates_dir),
        client=endpoint,
        lease=lease,
        policy=RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            base_delay_s=settings.retry_base_delay_s,
            max_delay_s=settings.retry_max_delay_s,
            retry_after_max_s=settings.retry_after_max_s,
        ),
        deadline_s=settings.task_deadline_s,
        record_ttl_s=settings.result_ttl_s,
    )
    return WorkerRuntime(redis=client, client=endpoint, lease=lease, generation=generation)


_lock = threading.Lock()
_runtimes: dict[tuple[int, int], WorkerRuntime] = {}


def runtime_for(settings: Settings) -> WorkerRuntime:
    """This process's runtime for ``settings`` (rebuilt after a fork)."""
    key = (os.getpid(), id(settings))
    runtime = _runtimes.get(key)
    if runtime is None:
        with _lock:
            runtime = _runtimes.get(key)
            if runtime is None:
                runtime = _runtimes[key] = build_runtime(settings)
    return runtime


def close_runtimes() -> None:
    with _lock:
        for runtime in _runtimes.values():
            runtime.close()
        _runtimes.clear()
