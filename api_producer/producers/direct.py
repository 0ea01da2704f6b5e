"""The direct producer: enqueue generation tasks straight into Redis, without the HTTP API.

For services that share genqueue's Redis. It writes the task record (so the API knows the id)
and sends the Celery message by task name; it never imports the worker's tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery

from api_producer.producers import replication, submission
from api_producer.producers.celery_message import MessageBuilder
from api_producer.producers.enqueue import (
    Accepted,
    EnqueueError,
    EnqueuePlan,
    IdempotencyConflict,
    IdempotencyInUse,
    Reservation,
    celery_priority,
    db_of,
    queue_of,
    request_digest,
    summary,
)
from api_producer.producers.submission import Step, describe_redis_error
from worker.contract import PRIORITY_MAX, QUEUE_NAME, GenerationRequest
from worker.redis_io import connections
from worker.settings import Settings

__all__ = [
    "Accepted",
    "DirectProducer",
    "EnqueueError",
    "IdempotencyConflict",
    "IdempotencyInUse",
    "celery_priority",
    "describe_redis_error",
    "producer_celery",
    "queue_of",
    "request_digest",
    "summary",
]


def producer_celery(settings: Settings) -> Celery:
    """A Celery app that only sends: JSON, sent events on, no result backend needed.

    genqueue's producers build its messages themselves
    (:mod:`api_producer.producers.celery_message`); the app
    gives them Celery's reply-to id and Lamport clock, and sends as Celery would elsewhere.
    """
    app = Celery("genqueue-producer", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        connections.celery_tls_config(settings),
        task_serializer="json",
        accept_content=["json"],
        task_send_sent_event=True,
        task_default_queue=QUEUE_NAME,
        # Its connection's waits are the API's (a hung Redis must not hold a send longer).
        broker_connection_timeout=connections.CONNECT_TIMEOUT_S,
        broker_connection_retry=False,
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
        broker_transport_options={
            "priority_steps": list(range(PRIORITY_MAX + 1)),
            "queue_order_strategy": "priority",
            "socket_connect_timeout": connections.CONNECT_TIMEOUT_S,
            "socket_timeout": settings.api_redis_timeout_s,
            **connections.sentinel_options(settings),
        },
    )
    return app


def make_plan(settings: Settings, client: redis.Redis) -> EnqueuePlan:
    """A plan with a sending Celery app of its own, for the database ``client`` uses."""
    return EnqueuePlan(settings, MessageBuilder(producer_celery(settings), db_of(client)))


class DirectProducer:
    """Enqueue ``genqueue.generate`` tasks into the Redis at ``settings.redis_url``.

    :param settings: genqueue's settings (``redis_url``, retention times).
    :param redis_client: an existing client to reuse; one is made from the settings if omitted.
    :param plan: the commands of a submission, shared with an :class:`AsyncProducer` of the
        same process; one is made if omitted.
    """

    def __init__(
        self,
        settings: Settings,
        redis_client: redis.Redis | None = None,
        plan: EnqueuePlan | None = None,
    ) -> None:
        self._settings = settings
        self._redis = redis_client or connections.sync_client(settings)
        self._results = connections.results_client(settings, self._redis, max_connections=4)
        self.plan = plan or make_plan(settings, self._redis)
        self._wait = replication.SubmitWait(settings)

    def close(self) -> None:
        self._redis.close()
        if self._results is not self._redis:
            self._results.close()

    def submit(self, request: GenerationRequest) -> str:
        """Enqueue one request; its task id."""
        return self.submit_many([request]).task_ids[0]

    def submit_many(
        self,
        requests: Sequence[GenerationRequest],
        idempotency_key: str | None = None,
        reservation: Reservation | None = None,
    ) -> Accepted:
        """Enqueue all of ``requests`` or none of them (:func:`submission.submit`)."""
        ttl_s = self._settings.idempotency_ttl_s
        steps = submission.submit(self.plan, requests, idempotency_key, ttl_s, reservation)
        return submission.run(steps, self._execute)

    def requeue(self, task_id: str, request: GenerationRequest) -> None:
        """Send a dead-lettered (or otherwise finished) task again under the same id
        (:func:`submission.requeue`)."""
        ttl_s = self._settings.result_ttl_s
        submission.run(submission.requeue(self.plan, task_id, request, ttl_s), self._execute)

    def _execute(self, step: Step) -> Any:
        client = self._results if step.results else self._redis
        if not step.transaction:
            return client.execute_command(*step.commands[0])
        pipe = client.pipeline(transaction=True)
        for command in step.commands:
            pipe.execute_command(*command)
        answer = pipe.execute()
        replicas = self._wait.replicas()
        if replicas and client is self._redis:
            reached = client.execute_command("WAIT", replicas, self._wait.timeout_ms)
            self._wait.reached(int(reached))
        return answer
