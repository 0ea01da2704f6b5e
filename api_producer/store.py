"""Reading, waiting on and cancelling tasks, for the HTTP API (asyncio Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import redis.asyncio as aioredis

from worker import keys, records
from worker.contract import TaskState, TaskStatus

#: How long ``DELETE`` waits for a running task to acknowledge its cancellation.
CANCEL_WAIT_S = 5.0


class TaskStore:
    """Task status from the record and Celery's result key.

    :param client: an asyncio Redis client on genqueue's Redis.
    :param result_ttl_s: how long a cancelled task's result is kept.
    """

    def __init__(self, client: aioredis.Redis, result_ttl_s: int) -> None:
        self._redis = client
        self._result_ttl_s = result_ttl_s

    async def get(self, task_id: str) -> TaskStatus | None:
        """The status, or ``None`` for an id genqueue never accepted (or has forgotten)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys.task_record(task_id))
        pipe.get(keys.celery_result(task_id))
        record, meta = await pipe.execute()
        if not record and meta is None:
            return None
        return records.status_from(task_id, record, meta)

    async def wait(self, task_id: str, timeout_s: float) -> TaskStatus | None:
        """The status once final, or as it is after ``timeout_s``; no polling loop."""
        status = await self.get(task_id)
        if status is None or status.status.is_final or timeout_s <= 0:
            return status
        deadline = time.monotonic() + timeout_s
        pubsub = self._redis.pubsub()
        try:
            # Celery's Redis backend publishes every state on a channel named like the key.
            await pubsub.subscribe(keys.celery_result(task_id))
            status = await self.get(task_id)  # it may have finished before we subscribed
            while status is not None and not status.status.is_final:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
                status = await self.get(task_id)
        finally:
            await pubsub.aclose()
        return status

    async def cancel(self, task_id: str) -> TaskStatus | None:
        """Ask for cancellation; a task not yet running is marked cancelled at once."""
        status = await self.get(task_id)
        if status is None or status.status.is_final:
            return status
        await self._redis.hset(keys.task_record(task_id), records.F_CANCEL, "1")
        if status.status is TaskState.QUEUED:
            await self._store_revoked(task_id)
            return await self.get(task_id)
        # Running or retrying: the worker that runs it aborts its endpoint call.
        await self._redis.publish(keys.CANCEL_CHANNEL, task_id)
        return await self.wait(task_id, CANCEL_WAIT_S)

    async def _store_revoked(self, task_id: str) -> None:
        """Write Celery's REVOKED state, so plain Celery clients see the cancellation too."""
        meta = records.revoked_meta(task_id)
        key = keys.celery_result(task_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(key, meta, ex=self._result_ttl_s)
        pipe.hset(keys.task_record(task_id), records.F_FINISHED, records.utcnow_iso())
        pipe.publish(key, meta)
        await pipe.execute()

    async def ping(self) -> bool:
        return bool(await self._redis.ping())
