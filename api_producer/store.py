"""Reading, waiting on and cancelling tasks, for the HTTP API (asyncio Redis)."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis

from api_producer.waiters import ResultListener, TooManyWaiters
from worker import keys
from worker.contract import TaskState, TaskStatus
from worker.delivery import records

#: How long ``DELETE`` waits for a running task to acknowledge its cancellation.
CANCEL_WAIT_S = 5.0
#: Status reads of ``?wait=`` requests at once: thousands of waiters woken together (or
#: arriving together) take turns on this many connections instead of opening one each.
WAIT_READS = 16


class TaskStore:
    """Task status from the record and Celery's result key.

    :param client: an asyncio Redis client on genqueue's Redis.
    :param result_ttl_s: how long a cancelled task's result is kept.
    :param listener: the process's one pub/sub connection, for waits.
    """

    def __init__(self, client: aioredis.Redis, result_ttl_s: int, listener: ResultListener) -> None:
        self._redis = client
        self._result_ttl_s = result_ttl_s
        self._listener = listener
        self._wait_reads = asyncio.Semaphore(WAIT_READS)

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
        """The status once final, or as it is after ``timeout_s``; no polling loop.

        Raises :class:`TooManyWaiters` when this process holds its most waits already.
        """
        if timeout_s <= 0:
            return await self.get(task_id)
        status = await self._wait_read(task_id)
        if status is None or status.status.is_final:
            return status
        deadline = asyncio.get_running_loop().time() + timeout_s
        # Celery's Redis backend publishes every state on a channel named like the key.
        async with self._listener.watch(keys.celery_result(task_id)) as watch:
            await _until(watch.subscribed, deadline)
            while True:
                watch.changed.clear()
                # Read after subscribing (it may have finished before), after each message,
                # and once more at the deadline (a message lost to a reconnect).
                status = await self._wait_read(task_id)
                if status is None or status.status.is_final:
                    return status
                if asyncio.get_running_loop().time() >= deadline:
                    return status
                await _until(watch.changed, deadline)

    async def _wait_read(self, task_id: str) -> TaskStatus | None:
        async with self._wait_reads:
            return await self.get(task_id)

    async def aclose(self) -> None:
        await self._listener.aclose()

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
        try:
            return await self.wait(task_id, CANCEL_WAIT_S)
        except TooManyWaiters:
            return await self.get(task_id)  # asked for: the worker acknowledges on its own

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


async def _until(event: asyncio.Event, deadline: float) -> None:
    """Wait for ``event`` until the event loop's clock reads ``deadline``, no longer."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            await event.wait()
