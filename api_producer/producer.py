"""The direct producer: enqueue generation tasks straight into Redis, without the HTTP API.

For services that share genqueue's Redis. It writes the task record (so the API knows the id)
and sends the Celery message by task name; it never imports the worker's tasks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from worker import connections, keys, records
from worker.contract import PRIORITY_MAX, QUEUE_NAME, TASK_NAME, GenerationRequest
from worker.endpoints import queue_for
from worker.settings import Settings

#: Characters of the prompt shown in Flower's argument summary.
SUMMARY_PROMPT_CHARS = 60


class EnqueueError(Exception):
    """Raised when a task could not be stored and sent; nothing of it was left behind."""


class IdempotencyConflict(Exception):
    """Raised when an idempotency key was used before with a different body."""


@dataclass(frozen=True)
class Accepted:
    task_ids: list[str]
    replayed: bool = False


def producer_celery(settings: Settings) -> Celery:
    """A Celery app that only sends: JSON, sent events on, no result backend needed."""
    app = Celery("genqueue-producer", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
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
        },
    )
    return app


def queue_of(request: GenerationRequest) -> str:
    """A named endpoint has a queue of its own, so workers can be dedicated to it."""
    return queue_for(request.endpoint) if request.endpoint else QUEUE_NAME


def celery_priority(request: GenerationRequest) -> int:
    """Celery on Redis serves 0 first; genqueue's 9 is the most urgent."""
    return PRIORITY_MAX - request.priority


def request_digest(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def summary(request: GenerationRequest) -> str:
    """A short, secret-free argument summary for Flower."""
    text = request.prompt if request.prompt is not None else (request.messages or [])[-1].content
    shown = text if len(text) <= SUMMARY_PROMPT_CHARS else text[:SUMMARY_PROMPT_CHARS] + "..."
    parts = {
        "template": request.template,
        "endpoint": request.endpoint or "(default)",
        "prompt": shown,
    }
    if request.params.max_tokens is not None:
        parts["max_tokens"] = str(request.params.max_tokens)
    return json.dumps(parts, ensure_ascii=False)


class DirectProducer:
    """Enqueue ``genqueue.generate`` tasks into the Redis at ``settings.redis_url``.

    :param settings: genqueue's settings (``redis_url``, retention times).
    :param redis_client: an existing client to reuse; one is made from the settings if omitted.
    """

    def __init__(self, settings: Settings, redis_client: redis.Redis | None = None) -> None:
        self._settings = settings
        self._redis = redis_client or connections.sync_client(settings.redis_url)
        self._celery = producer_celery(settings)

    def close(self) -> None:
        self._celery.close()
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
            self._store_records(task_ids, requests)
        except redis.RedisError as err:
            self._forget_claim(claim)
            raise EnqueueError(f"could not store the task: {describe_redis_error(err)}") from err
        sent = self._send_all(task_ids, requests, payloads, claim)
        return Accepted(task_ids=sent)

    def _send_all(
        self,
        task_ids: list[str],
        requests: Sequence[GenerationRequest],
        payloads: list[dict[str, Any]],
        claim: str | None,
    ) -> list[str]:
        sent: list[str] = []
        try:
            with self._celery.producer_or_acquire() as producer:
                for task_id, request, payload in zip(task_ids, requests, payloads, strict=True):
                    self._send(producer, task_id, request, payload)
                    sent.append(task_id)
        except Exception as err:
            self._withdraw(task_ids, sent)
            self._forget_claim(claim)
            raise EnqueueError(f"could not send the task: {describe_redis_error(err)}") from err
        return sent

    def _send(
        self, producer: Any, task_id: str, request: GenerationRequest, payload: dict[str, Any]
    ) -> None:
        self._celery.send_task(
            TASK_NAME,
            kwargs={"request": payload},
            task_id=task_id,
            queue=queue_of(request),
            priority=celery_priority(request),
            argsrepr="()",
            kwargsrepr=summary(request),
            producer=producer,
        )

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
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(keys.celery_result(task_id))
        pipe.hdel(key, records.F_ERROR, records.F_FINISHED, records.F_FIRST_ATTEMPT, *stale)
        pipe.hset(key, records.F_ATTEMPTS, "0")
        pipe.hsetnx(key, records.F_CREATED, records.utcnow_iso())
        pipe.expire(key, self._settings.result_ttl_s)
        pipe.execute()
        self._send_all([task_id], [request], [request.to_payload()], None)

    def _store_records(self, task_ids: list[str], requests: Sequence[GenerationRequest]) -> None:
        """The records, with what a lost message needs to be sent again (worker/reaper.py)."""
        pipe = self._redis.pipeline(transaction=True)
        now = time.time()
        for task_id, request in zip(task_ids, requests, strict=True):
            key = keys.task_record(task_id)
            record = records.new_record(request.metadata)
            record[records.F_PAYLOAD] = json.dumps(request.to_payload(), separators=(",", ":"))
            record[records.F_QUEUE] = queue_of(request)
            record[records.F_PRIORITY] = str(celery_priority(request))
            pipe.hset(key, mapping=record)  # type: ignore[arg-type]
            pipe.expire(key, self._settings.result_ttl_s)
            pipe.zadd(keys.inbox(), {task_id: now})
        pipe.expire(keys.inbox(), self._settings.result_ttl_s)
        pipe.execute()

    def _withdraw(self, task_ids: list[str], sent: list[str]) -> None:
        """Undo a half-sent batch: sent tasks are cancelled, records of the rest deleted."""
        try:
            pipe = self._redis.pipeline(transaction=True)
            for task_id in task_ids:
                if task_id in sent:
                    pipe.hset(keys.task_record(task_id), records.F_CANCEL, "1")
                else:
                    pipe.delete(keys.task_record(task_id))
            pipe.zrem(keys.inbox(), *task_ids)
            pipe.execute()
        except redis.RedisError:
            pass  # Redis is gone too: the records expire by themselves.

    def _claim(self, key: str, digest: str, task_ids: list[str]) -> Accepted | str:
        """Claim the idempotency key for ``task_ids``, or the earlier call's answer."""
        redis_key = keys.idempotency(hashlib.sha256(key.encode()).hexdigest())
        value = json.dumps({"digest": digest, "task_ids": task_ids})
        try:
            if self._redis.set(redis_key, value, nx=True, ex=self._settings.idempotency_ttl_s):
                return redis_key
            existing = self._redis.get(redis_key)
        except redis.RedisError as err:
            raise EnqueueError(f"could not store the task: {describe_redis_error(err)}") from err
        if existing is None:  # expired between the two commands
            return self._claim(key, digest, task_ids)
        earlier = json.loads(existing)
        if earlier["digest"] != digest:
            raise IdempotencyConflict("this Idempotency-Key was used with a different body")
        return Accepted(task_ids=list(earlier["task_ids"]), replayed=True)

    def _forget_claim(self, claim: str | None) -> None:
        if claim is not None:
            with contextlib.suppress(redis.RedisError):
                self._redis.delete(claim)


def describe_redis_error(err: BaseException) -> str:
    """A short reason that never includes the Redis URL (it may hold a password)."""
    text = str(err)
    if isinstance(err, redis.exceptions.OutOfMemoryError) or "maxmemory" in text:
        return "Redis is out of memory (maxmemory reached)"
    if isinstance(err, redis.ConnectionError | ConnectionError | OSError | TimeoutError):
        return "Redis is unreachable"
    return type(err).__name__
