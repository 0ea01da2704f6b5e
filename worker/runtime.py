"""The resources of one worker process, built once from the settings, on first use."""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass

import redis

from worker import connections
from worker.backoff import RetryPolicy
from worker.deadletter import DeadLetters
from worker.endpoint import CompletionClient, EndpointConfig
from worker.errors import SettingsError
from worker.generation import Generation, GenerationPolicy
from worker.guard import EndpointGuard, GuardPolicy
from worker.liveness import RunningTasks
from worker.observe import TaskObserver, process_metrics
from worker.prompts import PromptRenderer
from worker.settings import Settings, env_name
from worker.webhooks import WebhookSender, policy_from

#: Connections beyond the task concurrency, for the heartbeat and bookkeeping.
SPARE_CONNECTIONS = 16
#: How long a concurrency lease outlives a worker that stopped renewing it.
LEASE_TTL_S = 30.0


@dataclass
class WorkerRuntime:
    redis: redis.Redis
    client: CompletionClient
    guard: EndpointGuard
    running: RunningTasks
    generation: Generation
    webhooks: WebhookSender | None = None

    def close(self) -> None:
        if self.webhooks is not None:
            self.webhooks.close()
        self.guard.close()
        self.running.close()
        self.client.close()
        self.redis.close()


def redis_client(settings: Settings, max_connections: int) -> redis.Redis:
    """A client whose pool waits for a free connection instead of failing past its size."""
    return connections.sync_client(
        settings.redis_url, max_connections=max_connections, socket_timeout_s=30
    )


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
    guard = EndpointGuard(
        client,
        endpoint_id(url),
        GuardPolicy(
            limit=settings.runpod_max_concurrency,
            lease_ttl_s=LEASE_TTL_S,
            failure_threshold=settings.breaker_failure_threshold,
            cooldown_s=settings.breaker_cooldown_s,
        ),
    )
    # A claim outlives its worker by less than the visibility timeout, so a redelivered task
    # of a dead worker is never taken for a duplicate.
    running = RunningTasks(client, claim_ttl_s=settings.visibility_timeout_s * 2 / 3)
    generation = Generation(
        redis_client=client,
        renderer=PromptRenderer(settings.templates_dir),
        client=endpoint,
        guard=guard,
        running=running,
        dead_letters=DeadLetters(client, settings.dead_letter_max),
        policy=GenerationPolicy(
            retry=RetryPolicy(
                max_attempts=settings.retry_max_attempts,
                base_delay_s=settings.retry_base_delay_s,
                max_delay_s=settings.retry_max_delay_s,
                retry_after_max_s=settings.retry_after_max_s,
            ),
            deadline_s=settings.task_deadline_s,
            record_ttl_s=settings.result_ttl_s,
            max_deliveries=settings.max_deliveries,
            events_maxlen=settings.events_maxlen,
        ),
        observer=TaskObserver(
            process_metrics(), endpoint_id=endpoint_id(url), log_prompts=settings.log_prompts
        ),
    )
    webhooks = WebhookSender(
        client,
        policy_from(settings),
        on_outcome=lambda outcome: process_metrics().webhooks.labels(outcome).inc(),
    )
    return WorkerRuntime(
        redis=client,
        client=endpoint,
        guard=guard,
        running=running,
        generation=generation,
        webhooks=webhooks,
    )


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
