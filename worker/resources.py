"""The resources of one worker process, built once from the settings, on first use."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis
from redis import Redis

from worker.delivery import broker
from worker.delivery.dead_letters import DeadLetters
from worker.delivery.heartbeat import RunningTasks
from worker.delivery.task_scripts import BrokerAcks
from worker.endpoints.clients import EndpointTarget, build_target
from worker.endpoints.config import require_endpoints
from worker.errors import SettingsError
from worker.observability.call_clock import CallClock
from worker.observability.metrics import TaskObserver, process_metrics
from worker.observability.scaling import queues_of
from worker.pipeline.attempt import GenerationPolicy
from worker.pipeline.backoff import RetryPolicy
from worker.pipeline.generation import Generation
from worker.pipeline.render import PromptRenderer
from worker.redis_io import connections
from worker.redis_io.redis_outage import OutagePolicy
from worker.settings import Settings
from worker.tenancy.tenants import TenantsSource
from worker.webhooks.sender import WebhookSender, policy_from

#: Connections beyond the task concurrency, for the heartbeat and bookkeeping.
SPARE_CONNECTIONS = 16
#: How often a config file that does not load is read again while tasks wait for it.
CONFIG_RETRY_S = 1.0

log = logging.getLogger("genqueue.worker")
Loaded = TypeVar("Loaded")


@dataclass
class WorkerRuntime:
    redis: redis.Redis
    targets: dict[str, EndpointTarget]
    running: RunningTasks
    generation: Generation
    webhooks: WebhookSender | None = None
    #: The Redis of Celery's results, when it is not ``redis`` (GENQUEUE_RESULT_REDIS_URL).
    results: Redis | None = None
    call_clock: CallClock | None = None

    def close(self) -> None:
        if self.call_clock is not None:
            self.call_clock.close()
        if self.webhooks is not None:
            self.webhooks.close()
        for target in self.targets.values():
            target.close()
        self.running.close()
        self.redis.close()
        if self.results is not None:
            self.results.close()


def redis_client(settings: Settings, max_connections: int) -> redis.Redis:
    """A client whose pool waits for a free connection instead of failing past its size."""
    return connections.sync_client(settings, max_connections=max_connections, socket_timeout_s=30)


def until_loaded(load: Callable[[], Loaded], what: str) -> Loaded:
    """``load()``, read again every :data:`CONFIG_RETRY_S` while it raises :class:`SettingsError`.

    ``genqueue worker`` checks the config files at start, but a process reads them when it
    takes its first task (one its supervisor started again, too): a file broken since then
    holds the tasks back, logged, until it loads. No task fails because of an edit.
    """
    while True:
        try:
            return load()
        except SettingsError as err:
            log.error("%s does not load, tasks wait until it does: %s", what, err)
            time.sleep(CONFIG_RETRY_S)


def build_runtime(settings: Settings) -> WorkerRuntime:
    endpoints = until_loaded(lambda: require_endpoints(settings), "the endpoints file")
    concurrency = settings.worker_concurrency
    client = redis_client(settings, concurrency + SPARE_CONNECTIONS)
    results = connections.results_client(settings, client, concurrency + SPARE_CONNECTIONS)
    # A worker checks no keys (the API does).
    tenants = until_loaded(lambda: TenantsSource(settings, checks_keys=False), "the tenants file")

    def weight_of(tenant: str) -> float:
        # Read at each use: the tenants file is re-read when it changes.
        return tenants.current().weight_of(tenant)

    def pod_decision(name: str) -> Callable[[str, str], None]:
        return lambda decision, _reason: (
            process_metrics().pod_decisions.labels(name, decision).inc()
        )

    call_clock = CallClock(client)
    targets = {
        name: build_target(
            spec,
            settings,
            client,
            concurrency,
            settings.slot_lease_ttl_s,
            weight_of,
            on_decision=pod_decision(name),
            queues=queues_of(endpoints, name),
        )
        for name, spec in endpoints.specs.items()
    }
    # A claim outlives its worker by less than the visibility timeout, so a redelivered task
    # of a dead worker is never taken for a duplicate.
    outage = OutagePolicy.from_settings(settings)
    running = RunningTasks(client, settings.visibility_timeout_s * 2 / 3, outage)
    generation = Generation(
        redis_client=client,
        renderer=PromptRenderer(settings.templates_dir),
        endpoints=endpoints,
        targets=targets,
        running=running,
        dead_letters=DeadLetters(client, settings.dead_letter_max),
        policy=GenerationPolicy(
            retry=RetryPolicy.from_settings(settings),
            deadline_s=settings.task_deadline_s,
            record_ttl_s=settings.result_ttl_s,
            max_deliveries=settings.max_deliveries,
            events_maxlen=settings.events_maxlen,
            outage=outage,
            default_max_tokens=settings.default_max_tokens,
            usage_ttl_s=settings.usage_ttl_s,
        ),
        observer=TaskObserver(
            process_metrics(), log_prompts=settings.log_prompts, on_call=call_clock.note
        ),
        broker_acks=BrokerAcks(
            unacked_key=broker.UNACKED_KEY,
            unacked_index_key=broker.UNACKED_INDEX_KEY,
            settled=broker.settle,
        ),
        result_client=results,
        tenants=tenants.current,
    )
    webhooks = WebhookSender(
        client,
        policy_from(settings),
        on_outcome=lambda outcome: process_metrics().webhooks.labels(outcome).inc(),
        tenant_secret=lambda name: tenants.current().webhook_secret_of(name),
        results=results,
    )
    return WorkerRuntime(
        redis=client,
        targets=targets,
        running=running,
        generation=generation,
        webhooks=webhooks,
        results=results if results is not client else None,
        call_clock=call_clock,
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
