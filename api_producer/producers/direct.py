"""The direct producer: enqueue generation tasks straight into Redis, without the HTTP API.

For services that share genqueue's Redis. It writes the task record (so the API knows the id)
and sends the Celery message by task name; it never imports the worker's tasks.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence

import redis
from celery import Celery
from redis.sentinel import MasterNotFoundError

from api_producer.producers.celery_message import MessageBuilder
from api_producer.producers.enqueue import (
    Accepted,
    Command,
    EnqueueError,
    EnqueuePlan,
    IdempotencyConflict,
    celery_priority,
    claim_key,
    claim_value,
    db_of,
    earlier_answer,
    queue_of,
    request_digest,
    summary,
)
from worker import connections, keys
from worker.contract import PRIORITY_MAX, QUEUE_NAME, GenerationRequest
from worker.delivery import records
from worker.settings import Settings

__all__ = [
    "Accepted",
    "DirectProducer",
    "EnqueueError",
    "IdempotencyConflict",
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
        broker_connection_timeout=2,
        broker_connection_retry=False,
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
        broker_transport_options={
            "priority_steps": list(range(PRIORITY_MAX + 1)),
            "queue_order_strategy": "priority",
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
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
        self.plan = plan or make_plan(settings, self._redis)

    def close(self) -> None:
        self._redis.close()

    def submit(self, request: GenerationRequest) -> str:
        """Enqueue one request; its task id."""
        return self.submit_many([request]).task_ids[0]

    def submit_many(
        self, requests: Sequence[GenerationRequest], idempotency_key: str | None = None
    ) -> Accepted:
        """Enqueue all of ``requests`` or none of them.

        With ``idempotency_key``, the same key and body return the ids of the first call and
        enqueue nothing; the same key with another body raises :class:`IdempotencyConflict`.
        """
        payloads = [request.to_payload() for request in requests]
        task_ids = [str(uuid.uuid4()) for _ in requests]
        claim: str | None = None
        if idempotency_key is not None:
            claimed = self._claim(idempotency_key, request_digest(payloads), task_ids)
            if isinstance(claimed, Accepted):
                return claimed
            claim = claimed
        try:
            self._transaction(self.plan.accept(task_ids, requests, payloads))
        except redis.RedisError as err:
            self._forget_claim(claim)
            raise EnqueueError(f"could not store the task: {describe_redis_error(err)}") from err
        self.plan.sent(requests)
        return Accepted(task_ids=task_ids)

    def _transaction(self, commands: list[Command]) -> None:
        pipe = self._redis.pipeline(transaction=True)
        for command in commands:
            pipe.execute_command(*command)
        pipe.execute()

    def requeue(self, task_id: str, request: GenerationRequest) -> None:
        """Send a dead-lettered (or otherwise finished) task again under the same id.

        Its previous outcome, deliveries and attempts are cleared first, so it starts afresh.
        """
        key = keys.task_record(task_id)
        stale = [
            field
            for field in self._redis.hkeys(key)  # type: ignore[union-attr]
            if bytes(field).decode().startswith(records.F_DELIVERIES)  # type: ignore[arg-type]
        ]
        commands: list[Command] = [
            ("DEL", keys.celery_result(task_id)),
            ("HDEL", key, records.F_ERROR, records.F_FINISHED, records.F_FIRST_ATTEMPT, *stale),
            ("HSET", key, records.F_ATTEMPTS, "0"),
            ("HSETNX", key, records.F_CREATED, records.utcnow_iso()),
            ("EXPIRE", key, self._settings.result_ttl_s),
            *self.plan.send(task_id, request, request.to_payload()),
        ]
        try:
            self._transaction(commands)
        except redis.RedisError as err:
            raise EnqueueError(f"could not send the task: {describe_redis_error(err)}") from err
        self.plan.sent([request])

    def _claim(self, key: str, digest: str, task_ids: list[str]) -> Accepted | str:
        """Claim the idempotency key for ``task_ids``, or the earlier call's answer."""
        redis_key = claim_key(key)
        try:
            if self._redis.set(
                redis_key,
                claim_value(digest, task_ids),
                nx=True,
                ex=self._settings.idempotency_ttl_s,
            ):
                return redis_key
            existing = self._redis.get(redis_key)
        except redis.RedisError as err:
            raise EnqueueError(f"could not store the task: {describe_redis_error(err)}") from err
        if existing is None:  # expired between the two commands
            return self._claim(key, digest, task_ids)
        return earlier_answer(existing, digest)  # type: ignore[arg-type]

    def _forget_claim(self, claim: str | None) -> None:
        if claim is not None:
            with contextlib.suppress(redis.RedisError):
                self._redis.delete(claim)


def describe_redis_error(err: BaseException) -> str:
    """A short reason that never includes the Redis URL (it may hold a password)."""
    text = str(err)
    if isinstance(err, redis.exceptions.OutOfMemoryError) or "maxmemory" in text:
        return "Redis is out of memory (maxmemory reached)"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        # ssl's reason ("unable to get local issuer certificate", a host name mismatch) only.
        reason = text.split("certificate verify failed:", 1)[-1].split("(_ssl", 1)[0].strip()
        return (
            f"Redis's TLS certificate was refused ({reason or 'verify failed'}): is it signed "
            "by the CA of GENQUEUE_REDIS_CA_FILE, for the host of REDIS_URL?"
        )
    if isinstance(err, MasterNotFoundError):
        return (
            "no sentinel names a reachable primary (is GENQUEUE_REDIS_SENTINEL_MASTER its name, "
            "GENQUEUE_REDIS_SENTINEL_PASSWORD the sentinels' password?)"
        )
    if isinstance(err, redis.ConnectionError | ConnectionError | OSError | TimeoutError):
        return "Redis is unreachable"
    return type(err).__name__
