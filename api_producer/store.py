"""Reading, waiting on and cancelling tasks, for the HTTP API (asyncio Redis)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from api_producer.waiters import ResultListener, TooManyWaiters
from worker import keys
from worker.contract import TaskState, TaskStatus
from worker.delivery import records
from worker.tenants import INTERNAL

#: How long ``DELETE`` waits for a running task to acknowledge its cancellation.
CANCEL_WAIT_S = 5.0
#: Status reads of ``?wait=`` requests at once: thousands of waiters woken together (or
#: arriving together) take turns on this many connections instead of opening one each.
WAIT_READS = 16


@dataclass(frozen=True)
class OwnedStatus:
    status: TaskStatus
    #: The tenant the task belongs to (``internal`` for a task sent without one).
    owner: str


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

    @property
    def client(self) -> aioredis.Redis:
        """The asyncio Redis client it reads with (shared with other readers of the API)."""
        return self._redis

    async def get(self, task_id: str) -> TaskStatus | None:
        """The status, or ``None`` for an id genqueue never accepted (or has forgotten)."""
        found = await self.get_owned(task_id)
        return found.status if found is not None else None

    async def get_owned(self, task_id: str, throttled: bool = False) -> OwnedStatus | None:
        """The status and the tenant the task belongs to; ``None`` for an unknown id.

        ``throttled``: a read before a wait, taking turns with the waits' reads (thousands of
        waits arriving together share a few connections instead of opening one each).
        """
        if throttled:
            async with self._wait_reads:
                return await self.get_owned(task_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys.task_record(task_id))
        pipe.get(keys.celery_result(task_id))
        record, meta = await pipe.execute()
        if not record and meta is None:
            return None
        owner = record.get(records.F_TENANT.encode()) if record else None
        return OwnedStatus(
            records.status_from(task_id, record, meta),
            owner.decode() if owner is not None else INTERNAL,
        )

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
        pipe = self._redis.pipeline(transaction=True)
        add_cancel(pipe, task_id, status.status, self._result_ttl_s)
        await pipe.execute()
        if status.status is TaskState.QUEUED:
            return await self.get(task_id)
        try:
            return await self.wait(task_id, CANCEL_WAIT_S)
        except TooManyWaiters:
            return await self.get(task_id)  # asked for: the worker acknowledges on its own

    async def ping(self) -> bool:
        return bool(await self._redis.ping())


def add_cancel(pipe: Pipeline, task_id: str, state: TaskState, result_ttl_s: int) -> None:
    """Add to ``pipe`` what cancels a task now in ``state`` (not final), for tasks and batches.

    The cancel flag always (a worker drops a flagged task before calling the endpoint). A queued
    task gets Celery's REVOKED result at once, so plain Celery clients see the cancellation too;
    a running or retrying one is announced on the cancel channel, so the worker running it
    aborts its endpoint call.
    """
    pipe.hset(keys.task_record(task_id), records.F_CANCEL, "1")
    if state is not TaskState.QUEUED:
        pipe.publish(keys.CANCEL_CHANNEL, task_id)
        return
    meta = records.revoked_meta(task_id)
    result_key = keys.celery_result(task_id)
    pipe.set(result_key, meta, ex=result_ttl_s)
    pipe.hset(keys.task_record(task_id), records.F_FINISHED, records.utcnow_iso())
    pipe.publish(result_key, meta)


async def _until(event: asyncio.Event, deadline: float) -> None:
    """Wait for ``event`` until the event loop's clock reads ``deadline``, no longer."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            await event.wait()
