"""What accepting a task writes to Redis, for the direct producer and the API alike.

One transaction (``MULTI``/``EXEC``) holds all of a submission: each task's record (what
``GET /v1/tasks/{id}`` and the lost-message sweep read), its inbox entry, its Celery message and
its task-sent event (the events of several tasks in one ``task.multi`` publish). Redis applies
all of them or none, so nothing is ever half-enqueued.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from api_producer.producers.celery_message import MessageBuilder, Outgoing
from worker import keys
from worker.contract import PRIORITY_MAX, TASK_NAME, GenerationRequest, request_tokens_estimate
from worker.delivery import records
from worker.errors import GenQueueError
from worker.observability.flower_summaries import payload_summary
from worker.settings import Settings
from worker.tenancy.tenants import tenant_of

#: A Redis command and its arguments, as ``execute_command`` takes them.
Command = tuple[Any, ...]
#: Task-sent events in one ``task.multi`` publish at most (a batch's chunk of ``submit_many``).
EVENTS_PER_PUBLISH = 100


class EnqueueError(GenQueueError):
    """Raised when a task could not be stored and sent; nothing of it was left behind."""

    error_type = "enqueue_failed"


class IdempotencyConflict(GenQueueError):
    """Raised when an idempotency key was used before with a different body."""

    error_type = "idempotency_conflict"


class IdempotencyInUse(IdempotencyConflict):
    """Raised when the first request with an idempotency key is still being enqueued after a
    second one waited :data:`~api_producer.producers.submission.KEY_IN_USE_WAIT_S` for it."""

    error_type = "idempotency_key_in_use"


@dataclass(frozen=True)
class Reservation:
    """Tokens held against a tenant's day budget (UTC ``day``), one count per task, in order;
    each task's end settles its own (worker/delivery/scripts/task_end.lua)."""

    day: str
    tokens: Sequence[int]


@dataclass(frozen=True)
class Accepted:
    task_ids: list[str]
    replayed: bool = False


def queue_of(request: GenerationRequest) -> str:
    """The queue of ``request``: its endpoint's (:func:`worker.keys.queue_for`)."""
    return keys.queue_for(request.endpoint)


def celery_priority(request: GenerationRequest) -> int:
    """Celery on Redis serves 0 first; genqueue's 9 is the most urgent."""
    return PRIORITY_MAX - request.priority


def summary(request: GenerationRequest) -> str:
    """The argument summary Flower shows for ``request`` (see
    :mod:`worker.observability.flower_summaries`)."""
    return payload_summary(request.to_payload())


def request_digest(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim_key(idempotency_key: str) -> str:
    """The Redis key of an idempotency key (its digest: the key may be a secret of the caller)."""
    return keys.idempotency(hashlib.sha256(idempotency_key.encode()).hexdigest())


def claim_value(digest: str, task_ids: list[str], pending: bool = False) -> str:
    """A claim's value: ``pending`` until the transaction that stores its tasks ran (the same
    transaction writes it again without)."""
    value: dict[str, Any] = {"digest": digest, "task_ids": task_ids}
    if pending:
        value["pending"] = True
    return json.dumps(value)


def earlier_answer(stored: bytes | str, digest: str) -> Accepted | None:
    """The first call's answer to a repeated key, ``None`` while its tasks are not stored yet;
    :class:`IdempotencyConflict` for a new body."""
    earlier = json.loads(stored)
    if earlier["digest"] != digest:
        raise IdempotencyConflict("this Idempotency-Key was used with a different body")
    if earlier.get("pending"):
        return None
    return Accepted(task_ids=list(earlier["task_ids"]), replayed=True)


def db_of(client: redis.Redis | aioredis.Redis) -> int:
    """The database number a client talks to."""
    return int(client.connection_pool.connection_kwargs.get("db") or 0)


class EnqueuePlan:
    """The commands of a submission; the caller runs them in one transaction.

    :param settings: genqueue's settings (``result_ttl_s``).
    :param builder: makes each task's Celery message and event.
    """

    def __init__(self, settings: Settings, builder: MessageBuilder) -> None:
        self._ttl_s = settings.result_ttl_s
        self._default_max_tokens = settings.default_max_tokens
        self._builder = builder
        self._declared: set[str] = set()

    def accept(
        self,
        task_ids: Sequence[str],
        requests: Sequence[GenerationRequest],
        payloads: Sequence[dict[str, Any]],
        reservation: Reservation | None = None,
    ) -> list[Command]:
        """Records, inbox entries, messages and events of new tasks."""
        now = time.time()
        commands: list[Command] = []
        for index, (task_id, request, payload) in enumerate(
            zip(task_ids, requests, payloads, strict=True)
        ):
            record = self._record(task_id, request, payload)
            if reservation is not None:
                record[records.F_RESERVED] = str(reservation.tokens[index])
                record[records.F_RESERVED_DAY] = reservation.day
            commands += self._write(task_id, record, now)
        commands.append(("EXPIRE", keys.inbox(), self._ttl_s))
        sent = []
        for task_id, request, payload in zip(task_ids, requests, payloads, strict=True):
            pushes, out = self._message(task_id, request, payload)
            commands += pushes
            sent.append(out)
        return commands + self._events(sent)

    def _events(self, sent: list[Outgoing]) -> list[Command]:
        """The task-sent events of a submission: one task's as Celery sends it, several in
        ``task.multi`` lists of ``EVENTS_PER_PUBLISH`` (one PUBLISH instead of one per task)."""
        if len(sent) == 1:
            return [("PUBLISH", sent[0].topic, sent[0].event)]
        return [
            ("PUBLISH", *self._builder.multi_event([out.event_fields for out in chunk]))
            for chunk in (
                sent[start : start + EVENTS_PER_PUBLISH]
                for start in range(0, len(sent), EVENTS_PER_PUBLISH)
            )
        ]

    def _record(
        self, task_id: str, request: GenerationRequest, payload: dict[str, Any]
    ) -> dict[str, str]:
        """The record, with its owner and what a lost message needs to be sent again
        (worker/delivery/lost_message_sweep.py)."""
        record = records.new_record(request.metadata)
        record[records.F_TENANT] = tenant_of(request)
        record[records.F_PAYLOAD] = json.dumps(payload, separators=(",", ":"))
        record[records.F_QUEUE] = queue_of(request)
        record[records.F_PRIORITY] = str(celery_priority(request))
        record[records.F_ESTIMATE] = str(request_tokens_estimate(request, self._default_max_tokens))
        return record

    def _write(self, task_id: str, record: dict[str, str], now: float) -> list[Command]:
        key = keys.task_record(task_id)
        fields = [item for pair in record.items() for item in pair]
        return [
            ("HSET", key, *fields),
            ("EXPIRE", key, self._ttl_s),
            ("ZADD", keys.inbox(), now, task_id),
        ]

    def send(
        self, task_id: str, request: GenerationRequest, payload: dict[str, Any]
    ) -> list[Command]:
        """The Celery message and task-sent event of one task (and its queue's binding, once)."""
        commands, out = self._message(task_id, request, payload)
        return [*commands, ("PUBLISH", out.topic, out.event)]

    def _message(
        self, task_id: str, request: GenerationRequest, payload: dict[str, Any]
    ) -> tuple[list[Command], Outgoing]:
        """The push of one task's Celery message (and its queue's binding, once); its event."""
        queue = queue_of(request)
        commands: list[Command] = []
        if queue not in self._declared:
            commands += [("SADD", key, member) for key, member in keys.queue_bindings(queue)]
        out = self._builder.build(
            task_id,
            TASK_NAME,
            {"request": payload},
            queue,
            celery_priority(request),
            payload_summary(payload),
        )
        commands.append(("LPUSH", out.list_key, out.message))
        return commands, out

    def sent(self, requests: Sequence[GenerationRequest]) -> None:
        """Note that the transaction ran: the queues' bindings exist."""
        self._declared.update(queue_of(request) for request in requests)
