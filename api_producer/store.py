"""Reading, waiting on and cancelling tasks, for the HTTP API (asyncio Redis)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import redis.asyncio as aioredis

from api_producer.task_redis import TaskRedis
from api_producer.waiters import ResultListener, TooManyWaiters
from worker import keys
from worker.contract import TaskState, TaskStatus
from worker.delivery import records
from worker.tenancy.tenants import INTERNAL

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

    :param tasks: the records' and the results' Redis.
    :param listener: the process's one pub/sub connection (on the results' Redis), for waits.
    """

    def __init__(self, tasks: TaskRedis, listener: ResultListener) -> None:
        self._tasks = tasks
        self._listener = listener
        self._wait_reads = asyncio.Semaphore(WAIT_READS)

    @property
    def client(self) -> aioredis.Redis:
        """The asyncio client on ``REDIS_URL``'s Redis (shared with other readers of the API)."""
        return self._tasks.client

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
        (record, meta), place = await self._tasks.read_placed(task_id)
        if not record and meta is None:
            return None
        owner = record.get(records.F_TENANT.encode()) if record else None
        status = records.status_from(task_id, record, meta)
        if status.status is TaskState.QUEUED:
            status.queue_position = place.queue_position
            status.estimated_start_s = place.estimated_start_s
        return OwnedStatus(status, owner.decode() if owner is not None else INTERNAL)

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
        """Close the listener and the results' client of its own (``client`` is shared)."""
        await self._listener.aclose()
        if self._tasks.apart:
            await self._tasks.results.aclose()

    async def cancel(self, task_id: str) -> TaskStatus | None:
        """Ask for cancellation; a task not yet running is marked cancelled at once."""
        status = await self.get(task_id)
        if status is None or status.status.is_final:
            return status
        await self._tasks.cancel([(task_id, status.status)])
        if status.status is TaskState.QUEUED:
            return await self.get(task_id)
        try:
            return await self.wait(task_id, CANCEL_WAIT_S)
        except TooManyWaiters:
            return await self.get(task_id)  # asked for: the worker acknowledges on its own

    async def ping(self) -> None:
        """Raises unless Redis answers (and the results' Redis, when it is another)."""
        await self._tasks.client.ping()
        if self._tasks.apart:
            await self._tasks.results.ping()


async def _until(event: asyncio.Event, deadline: float) -> None:
    """Wait for ``event`` until the event loop's clock reads ``deadline``, no longer."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout_at(deadline):
            await event.wait()
