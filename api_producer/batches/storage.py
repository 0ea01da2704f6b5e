"""Batches in Redis: stored from validated lines, read and cancelled through their tasks.

A batch is two Redis keys, both kept for ``GENQUEUE_RESULT_TTL_S`` like its tasks:

- ``genqueue:batch:<id>``, a hash: ``created_at``, ``total``, ``tenant`` (its owner) and,
  once cancelled, ``cancelled_at``;
- ``genqueue:batch:<id>:tasks``, a list of ``<task_id> <custom_id>`` in input order.

Its tasks are ordinary genqueue tasks (enqueued with :meth:`DirectProducer.submit_many`, a chunk
at a time, at a low priority unless a line sets one), so a batch's state is read from its tasks'
records and Celery results, never stored twice.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis

from api_producer.batches.models import (
    ENQUEUE_CHUNK,
    F_CANCELLED,
    F_CREATED,
    F_TENANT,
    F_TOTAL,
    MISSING,
    READ_CHUNK,
    BatchCounts,
    BatchCreated,
    BatchLine,
    BatchResults,
    BatchState,
    BatchStatus,
)
from api_producer.producers.direct import DirectProducer, EnqueueError, describe_redis_error
from api_producer.producers.enqueue import Reservation
from api_producer.quota import TokenBudget
from api_producer.task_redis import RawTask, TaskRedis
from worker import keys
from worker.contract import TaskState
from worker.delivery import records
from worker.redis_io import connections
from worker.settings import Settings
from worker.tenancy.tenants import INTERNAL, Tenant


def task_state(raw_record: dict[Any, Any], raw_meta: bytes | str | None) -> TaskState:
    """The state ``GET /v1/tasks/{id}`` reports (:func:`worker.delivery.records.state_from`).

    A task whose record and result have both expired counts as failed (``missing``).
    """
    if not raw_record and raw_meta is None:
        return TaskState.FAILED
    return records.state_from(raw_record, raw_meta)


def batch_state(counts: BatchCounts, total: int, cancel_requested: bool) -> BatchState:
    if cancel_requested:
        return BatchState.CANCELLED
    if counts.done >= total:
        return BatchState.COMPLETED
    if counts.queued == total:
        return BatchState.QUEUED
    return BatchState.RUNNING


def result_line(
    custom_id: str, task_id: str, raw_record: dict[Any, Any], raw_meta: bytes | None
) -> str:
    """One line of ``GET /v1/batches/{id}/results``: custom_id, task_id, status, result, error."""
    line: dict[str, Any] = {"custom_id": custom_id, "task_id": task_id}
    if not raw_record and raw_meta is None:
        line.update(status=TaskState.FAILED.value, result=None, error=MISSING.model_dump())
    else:
        status = records.status_from(task_id, raw_record, raw_meta)
        line.update(
            status=status.status.value,
            result=status.result.model_dump(mode="json") if status.result else None,
            error=status.error.model_dump(mode="json") if status.error else None,
        )
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"


def _part(held: Reservation | None, start: int, count: int) -> Reservation | None:
    """The holds of the tasks ``start`` to ``start + count`` of a batch's reservation."""
    if held is None:
        return None
    return Reservation(day=held.day, tokens=held.tokens[start : start + count])


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _entry(raw: bytes | str) -> tuple[str, str]:
    task_id, _, custom_id = _text(raw).partition(" ")
    return task_id, custom_id


class BatchStore:
    """Batches in Redis: created from validated lines, read and cancelled through their tasks.

    :param producer: enqueues the tasks, :data:`ENQUEUE_CHUNK` at a time.
    :param tasks: the tasks' records and results (a client on genqueue's Redis, and one on the
        results' when they are apart).
    :param result_ttl_s: how long a batch is kept (as long as its tasks' records).
    """

    def __init__(self, producer: DirectProducer, tasks: TaskRedis, result_ttl_s: int) -> None:
        self._producer = producer
        self._tasks = tasks
        self._redis = tasks.client
        self._ttl_s = result_ttl_s

    @classmethod
    def from_settings(cls, settings: Settings, producer: DirectProducer) -> BatchStore:
        client = connections.api_async_client(settings, max_connections=64)
        tasks = TaskRedis.from_settings(settings, client, max_connections=64)
        return cls(producer, tasks, settings.result_ttl_s)

    async def aclose(self) -> None:
        await self._tasks.aclose()

    async def create(
        self,
        lines: Sequence[BatchLine],
        tenant: Tenant | None = None,
        budget: TokenBudget | None = None,
    ) -> BatchCreated:
        """Enqueue every line's task and store the batch, or leave nothing runnable behind.

        The batch belongs to ``tenant``; its whole token estimate is held against the
        tenant's day budget first (:class:`QuotaExceeded` when it would pass it).
        Raises :class:`EnqueueError` when Redis fails midway; the tasks already sent are
        cancelled (they never reach the endpoint unless a worker took them meanwhile; each
        gives its hold back as it ends) and the holds of those not sent are given back.
        """
        batch_id = f"batch_{uuid.uuid4().hex}"
        created_at = records.utcnow_iso()
        task_ids: list[str] = []
        owner = tenant or Tenant(name=INTERNAL)
        held = await budget.reserve(owner, [line.request for line in lines]) if budget else None
        try:
            for start in range(0, len(lines), ENQUEUE_CHUNK):
                chunk = [line.request for line in lines[start : start + ENQUEUE_CHUNK]]
                part = _part(held, start, len(chunk))
                accepted = await asyncio.to_thread(self._producer.submit_many, chunk, None, part)
                task_ids += accepted.task_ids
            await self._store(batch_id, created_at, lines, task_ids, owner.name)
        except BaseException as err:
            if budget is not None:
                await asyncio.shield(budget.release(owner, held, len(task_ids)))
            await asyncio.shield(self._withdraw(task_ids))
            if isinstance(err, redis.RedisError | OSError):
                reason = describe_redis_error(err)
                raise EnqueueError(f"could not store the batch: {reason}") from err
            raise
        return BatchCreated(batch_id=batch_id, total=len(lines))

    async def owner(self, batch_id: str) -> str | None:
        """The tenant the batch belongs to; ``None`` for an unknown batch."""
        info = await self._info(batch_id)
        if info is None:
            return None
        return info.get(F_TENANT, INTERNAL)

    async def status(self, batch_id: str) -> BatchStatus | None:
        """Counts by state, read from every task; ``None`` for an unknown batch."""
        info = await self._info(batch_id)
        if info is None:
            return None
        total = int(info[F_TOTAL])
        tally: Counter[TaskState] = Counter()
        async for entries in self._entries(batch_id, total):
            replies = await self._read([task_id for task_id, _ in entries])
            tally.update(task_state(record, meta) for record, meta in replies)
        counts = BatchCounts(**{state.value: n for state, n in tally.items()})
        return BatchStatus.model_validate(
            {
                "batch_id": batch_id,
                "status": batch_state(counts, total, F_CANCELLED in info),
                "total": total,
                "counts": counts,
                "created_at": info.get(F_CREATED),
            }
        )

    async def results(self, batch_id: str) -> BatchResults | None:
        """The result lines in input order, a chunk of lines at a time; ``None`` if unknown."""
        info = await self._info(batch_id)
        if info is None:
            return None
        total = int(info[F_TOTAL])
        return BatchResults(total=total, lines=self._result_chunks(batch_id, total))

    async def cancel(self, batch_id: str) -> BatchStatus | None:
        """Cancel every task not final yet, as ``DELETE /v1/tasks/{id}`` does, without waiting."""
        info = await self._info(batch_id)
        if info is None:
            return None
        cancelled = 0
        async for entries in self._entries(batch_id, int(info[F_TOTAL])):
            cancelled += await self._cancel_tasks([task_id for task_id, _ in entries])
        if cancelled:
            await self._redis.hsetnx(keys.batch(batch_id), F_CANCELLED, records.utcnow_iso())
        return await self.status(batch_id)

    async def _result_chunks(self, batch_id: str, total: int) -> AsyncIterator[str]:
        async for entries in self._entries(batch_id, total):
            replies = await self._read([task_id for task_id, _ in entries])
            yield "".join(
                result_line(custom_id, task_id, record, meta)
                for (task_id, custom_id), (record, meta) in zip(entries, replies, strict=True)
            )

    async def _info(self, batch_id: str) -> dict[str, str] | None:
        raw = await self._redis.hgetall(keys.batch(batch_id))
        if not raw:
            return None
        info = {_text(key): _text(value) for key, value in raw.items()}
        return info if F_TOTAL in info else None

    async def _entries(self, batch_id: str, total: int) -> AsyncIterator[list[tuple[str, str]]]:
        """``(task_id, custom_id)`` in input order, :data:`READ_CHUNK` at a time."""
        list_key = keys.batch_tasks(batch_id)
        for start in range(0, total, READ_CHUNK):
            raw = await self._redis.lrange(list_key, start, start + READ_CHUNK - 1)
            if not raw:
                return  # expired meanwhile
            yield [_entry(item) for item in raw]

    async def _read(self, task_ids: Sequence[str]) -> list[RawTask]:
        """Each task's record and Celery result."""
        return await self._tasks.read(task_ids)

    async def _store(
        self,
        batch_id: str,
        created_at: str,
        lines: Sequence[BatchLine],
        task_ids: list[str],
        tenant: str,
    ) -> None:
        entries = [
            f"{task_id} {line.custom_id}" for task_id, line in zip(task_ids, lines, strict=True)
        ]
        list_key = keys.batch_tasks(batch_id)
        pipe = self._redis.pipeline(transaction=True)
        for start in range(0, len(entries), READ_CHUNK):
            pipe.rpush(list_key, *entries[start : start + READ_CHUNK])
        pipe.expire(list_key, self._ttl_s)
        # The hash last: a batch is found only once its task list is complete.
        pipe.hset(
            keys.batch(batch_id),
            mapping={F_CREATED: created_at, F_TOTAL: len(entries), F_TENANT: tenant},
        )
        pipe.expire(keys.batch(batch_id), self._ttl_s)
        await pipe.execute()

    async def _cancel_tasks(self, task_ids: Sequence[str]) -> int:
        """Cancel the tasks not final yet (:meth:`TaskRedis.cancel`); how many."""
        replies = await self._read(task_ids)
        cancels = []
        for task_id, (record, meta) in zip(task_ids, replies, strict=True):
            state = task_state(record, meta)
            if not state.is_final:
                cancels.append((task_id, state))
        if cancels:
            await self._tasks.cancel(cancels)
        return len(cancels)

    async def _withdraw(self, task_ids: Sequence[str]) -> None:
        """Cancel the tasks of a batch that could not be accepted whole.

        Only the cancel flag, as :meth:`DirectProducer._withdraw` does: a worker drops a
        flagged task before calling the endpoint, and discards the result of one it ran.
        """
        try:
            for start in range(0, len(task_ids), READ_CHUNK):
                pipe = self._redis.pipeline(transaction=False)
                for task_id in task_ids[start : start + READ_CHUNK]:
                    pipe.hset(keys.task_record(task_id), records.F_CANCEL, "1")
                await pipe.execute()
        except (redis.RedisError, OSError):
            pass  # Redis is gone too: the records expire by themselves.
