"""The Celery app, built from the settings: ``celery -A worker.celery_app worker`` works.

:func:`create_celery_app` is the factory; the module-level ``app`` is built from the
environment when this module is imported.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import redis
from celery import Celery, bootsteps
from celery.app import backends
from celery.signals import (
    after_setup_logger,
    celeryd_after_setup,
    celeryd_init,
    worker_process_shutdown,
    worker_ready,
)
from kombu import Queue

from worker import keys, upstream
from worker.config.settings_loading import load_settings
from worker.contract import PRIORITY_MAX, QUEUE_NAME
from worker.delivery import backlog, broker
from worker.delivery.dead_holders import dead_holder_sweeper, held_recorder
from worker.delivery.heartbeat import Heartbeat, restorer, unacked_renewer
from worker.delivery.lost_message_sweep import sender, sweep
from worker.delivery.result_backend import ResultBackend, SentinelResultBackend
from worker.endpoints.config import load_endpoints
from worker.errors import SettingsError
from worker.limits import presence
from worker.observability.flower_events import BatchedTaskEvents
from worker.observability.metrics import configure_task_logging, serve_worker_metrics
from worker.redis_io import connections, redis_sentinel
from worker.resources import SPARE_CONNECTIONS, close_runtimes, runtime_for
from worker.settings import Settings
from worker.tenancy.tenants import TenantsSource


class GenQueueCelery(Celery):
    """A Celery app that carries the settings it was built from, and stores task states with
    :class:`worker.delivery.result_backend.ResultBackend`."""

    genqueue_settings: Settings

    def _get_backend(self) -> ResultBackend:
        _, url = backends.by_url(self.conf.result_backend, self.loader)
        if redis_sentinel.is_sentinel(str(url)):
            return SentinelResultBackend(app=self, url=url)
        return ResultBackend(app=self, url=url)


#: The lost-message sweep runs every this many heartbeats, in one worker at a time.
REAPER_EVERY_BEATS = 6


class DeliveryHeartbeat(bootsteps.StartStopStep):
    """Renews the messages this worker holds, so only a dead worker's come back.

    Every message a worker has taken and not yet acknowledged (running, or waiting for a retry
    countdown) has its score in kombu's ``unacked_index`` pushed to now every
    ``GENQUEUE_HEARTBEAT_INTERVAL_S``. Redis hands a message to another worker once its score
    is older than ``GENQUEUE_VISIBILITY_TIMEOUT_S``, which is short (30 s): a killed worker's
    tasks run again within about 40 s, and a live worker's are never taken from it.

    The same heartbeat sweeps for stale messages: kombu's own sweep only runs when a BRPOP
    poll times out, which never happens on the gevent pool while other workers keep the
    queues busy.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._heartbeat: Heartbeat | None = None
        self._client: redis.Redis | None = None
        self._results: redis.Redis | None = None

    def start(self, parent: Any) -> None:
        settings = parent.app.genqueue_settings
        backlog.use_weights(backlog.tenants_file_weights(TenantsSource(settings)))
        endpoints = load_endpoints(settings)
        if endpoints is not None:
            backlog.use_fairness(backlog.token_queues(endpoints), settings.default_max_tokens)
        self._client = connections.sync_client(settings, max_connections=4)
        self._results = connections.results_client(settings, self._client, max_connections=2)
        channel = parent.task_consumer.channel
        renew = unacked_renewer(self._client, channel)
        queues = [queue.name for queue in parent.task_consumer.queues]
        reap = self._reaper(parent.app, settings, queues, channel.unacked_key)
        process_id = presence.for_process(self._client).id
        visibility_s, beat_s = settings.visibility_timeout_s, settings.heartbeat_interval_s
        beats = [
            renew,
            held_recorder(self._client, channel, process_id, visibility_s),
            dead_holder_sweeper(self._client, channel, beat_s, visibility_s),
            restorer(channel, visibility_s),
            reap,
        ]
        self._heartbeat = Heartbeat(settings.heartbeat_interval_s, beats)
        self._heartbeat.start()

    def _reaper(self, app: Any, settings: Settings, queues: list[str], unacked_key: str) -> Any:
        """A beat that, in one worker at a time, sends again the tasks whose message was lost
        (see :mod:`worker.delivery.lost_message_sweep`)."""
        assert self._client is not None
        client, results = self._client, self._results
        interval_ms = int(settings.heartbeat_interval_s * REAPER_EVERY_BEATS * 1000)
        send = sender(app)

        def reap_lost() -> None:
            if not client.set(keys.reaper_lock(), "1", nx=True, px=interval_ms):
                return
            sweep(
                client,
                send,
                queues,
                unacked_key,
                grace_s=settings.visibility_timeout_s * 2,
                retention_s=settings.result_ttl_s,
                results=results,
            )

        return reap_lost

    def stop(self, parent: Any) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None


def celery_config(settings: Settings) -> dict[str, Any]:
    pool_size = settings.worker_concurrency + SPARE_CONNECTIONS
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.results_url,
        **connections.celery_tls_config(settings),
        "result_backend_transport_options": connections.sentinel_options(
            settings, settings.results_url
        ),
        # JSON only: a pickled message is refused, never executed.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Flower sees every task from the moment it is sent.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "result_expires": settings.result_ttl_s,
        "result_extended": False,
        # One backend for all greenlets instead of one Redis connection per task (celery#6819).
        "result_backend_thread_safe": True,
        "redis_max_connections": pool_size,
        "redis_socket_connect_timeout": 5,
        "redis_socket_timeout": 30,
        "redis_retry_on_timeout": True,
        # Celery's own state writes (RETRY, FAILURE) ride out a Redis outage too, about as long
        # as genqueue's round trips do (worker.redis_io.redis_outage): a retry sleeps 1 s on
        # average.
        "result_backend_always_retry": True,
        "result_backend_max_retries": int(settings.redis_outage_s) + 1,
        "result_backend_base_sleep_between_retries_ms": 100,
        "result_backend_max_sleep_between_retries_ms": 2000,
        "broker_pool_limit": pool_size,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            # Look for messages of dead workers every few seconds, not every 100.
            "unacked_restore_interval": max(1, int(settings.visibility_timeout_s / 6)),
            "unacked_restore_throttle": 1,
            # The sweep runs under a Redis lock that only its holder releases: kombu's 300 s
            # expiry means a worker killed mid-sweep stops every sweep for five minutes, while
            # a dead worker's messages wait. Sweeps are safe to overlap (each message moves
            # back in its own WATCH transaction), so the lock only saves work: a third of the
            # visibility timeout is enough.
            "unacked_mutex_expire": restore_lock_s(settings),
            "priority_steps": list(range(PRIORITY_MAX + 1)),
            "queue_order_strategy": "priority",
            "max_connections": pool_size,
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
            "health_check_interval": 25,
            **connections.sentinel_options(settings),
        },
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": QUEUE_NAME,
        "task_queues": [Queue(name, routing_key=name) for name in keys.GENERAL_QUEUES],
        "worker_hijack_root_logger": True,
        "worker_redirect_stdouts": False,
        "worker_concurrency": settings.worker_concurrency,
        "worker_log_color": False,
    }


def restore_lock_s(settings: Settings) -> int:
    """How long the dead workers' sweep lock outlives a sweeper that died holding it."""
    return max(5, settings.visibility_timeout_s // 3)


def create_celery_app(settings: Settings) -> GenQueueCelery:
    """A Celery app wired for genqueue from ``settings``."""
    app = GenQueueCelery("genqueue", include=["worker.tasks"], set_as_current=True)
    app.genqueue_settings = settings
    app.conf.update(celery_config(settings))
    app.steps["consumer"].add(DeliveryHeartbeat)
    app.steps["consumer"].add(BatchedTaskEvents)
    return app


def _load() -> Settings:
    try:
        return load_settings()
    except SettingsError as err:
        # Invalid settings stop the process at start, naming the variable.
        print(f"genqueue: {err}", file=sys.stderr)
        raise SystemExit(2) from None


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    close_runtimes()


@worker_ready.connect
def _watch_pods(**_: Any) -> None:
    """Build the runtime at once when an endpoint names a pod: its idle stop runs from the
    start, not from the first task."""
    settings = app.genqueue_settings
    endpoints = load_endpoints(settings)
    if endpoints and any(spec.runpod_pod_id for spec in endpoints.specs.values()):
        runtime_for(settings)


#: Celery's lines for every task received and ended, which genqueue's task log replaces
#: (kept at DEBUG; failures are still logged as errors).
CELERY_PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


@after_setup_logger.connect
def _task_log_format(**_: Any) -> None:
    settings = app.genqueue_settings
    configure_task_logging(settings.log_format)
    if settings.log_level.upper() != "DEBUG":
        for name in CELERY_PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@celeryd_init.connect
def _serve_metrics(sender: str, instance: Any, **_: Any) -> None:
    settings = instance.app.genqueue_settings
    serve_worker_metrics(settings.worker_metrics_port, settings.worker_metrics_host, str(sender))


@celeryd_after_setup.connect
def _check_upstream(**_: Any) -> None:
    """A worker on a kombu, Celery or redis-py whose copied methods changed says so (and starts:
    pyproject.toml pins the tested minor releases; see :mod:`worker.upstream`)."""
    upstream.report()


broker.install()
app = create_celery_app(_load())
