"""Where the API reads a task's status and writes its cancellation: the task's record in
``REDIS_URL``'s Redis, Celery's result in the Redis of the results (``GENQUEUE_RESULT_REDIS_URL``,
the same Redis when unset). One pipeline when they are one Redis, one per Redis otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from celery import states

from worker import keys, lua
from worker.contract import TaskState
from worker.delivery import backlog, records
from worker.endpoints.config import DEFAULT_ENDPOINT
from worker.redis_io import connections
from worker.settings import Settings

#: A task's record (its raw hash) and Celery's raw result meta (``None``: none stored).
RawTask = tuple[dict[Any, Any], bytes | None]


@dataclass(frozen=True)
class Place:
    """Where a queued task is: the tasks ahead of it, and when it should start."""

    queue_position: int | None
    estimated_start_s: float | None


def place_of(answer: Any) -> Place:
    """The :class:`Place` of ``queue_position.lua``'s answer."""
    position, rate = answer
    if position is None:
        return Place(None, None)
    per_s = float(rate) if rate is not None else 0.0
    estimate = round(int(position) / per_s, 1) if per_s > 0 else None
    return Place(int(position), estimate)


class TaskRedis:
    """Reads records with their results, and writes cancellations, across the two Redis.

    :param client: an asyncio client on ``REDIS_URL``'s Redis (the records).
    :param results: an asyncio client on the Redis of Celery's results; ``client`` itself when
        they are one Redis.
    :param result_ttl_s: how long a cancelled task's ``REVOKED`` result is kept.
    """

    def __init__(self, client: aioredis.Redis, results: aioredis.Redis, result_ttl_s: int) -> None:
        self.client = client
        self.results = results
        self._result_ttl_s = result_ttl_s
        # Never over a success: a task that finished since its state was read stays finished.
        self._revoke = lua.named(results, "worker.delivery", "store_result")
        self._give_back = lua.named(client, "worker.delivery", "reservation_release")
        self._place = lua.named(client, "worker.delivery", "queue_position")
        #: The endpoint of genqueue's own queue, and the tenants' weights (``weights_spec``).
        self.default_endpoint = DEFAULT_ENDPOINT
        self.weights: Callable[[], str] = lambda: ""

    @classmethod
    def from_settings(
        cls, settings: Settings, client: aioredis.Redis, max_connections: int
    ) -> TaskRedis:
        """Records on ``client``; results there too, or on a client of their own."""
        results = client
        if settings.results_apart:
            results = connections.api_async_client(
                settings, max_connections=max_connections, results=True
            )
        return cls(client, results, settings.result_ttl_s)

    @property
    def apart(self) -> bool:
        return self.results is not self.client

    async def read(self, task_ids: Sequence[str]) -> list[RawTask]:
        """Each task's record and result meta, in the order of ``task_ids``."""
        if not self.apart:
            pipe = self.client.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.hgetall(keys.task_record(task_id))
                pipe.get(keys.celery_result(task_id))
            replies = await pipe.execute()
            return list(zip(replies[0::2], replies[1::2], strict=True))
        pipe = self.client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hgetall(keys.task_record(task_id))
        found, metas = await asyncio.gather(
            pipe.execute(), self.results.mget([keys.celery_result(t) for t in task_ids])
        )
        return list(zip(found, cast(list[bytes | None], metas), strict=True))

    async def read_placed(self, task_id: str) -> tuple[RawTask, Place]:
        """The task's record and result meta, and its place in the queue (read in the same
        pipeline: a bounded number of commands, whatever the backlog holds)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(keys.task_record(task_id))
        if not self.apart:
            pipe.get(keys.celery_result(task_id))
        await self._place(
            keys={"record_key": keys.task_record(task_id), "events_key": keys.EVENTS_STREAM},
            args={
                "default_endpoint": self.default_endpoint,
                "weights": self.weights(),
                "default_tenant": backlog.DEFAULT_TENANT,
            },
            client=pipe,
        )
        if self.apart:
            replies, meta = await asyncio.gather(
                pipe.execute(), self.results.get(keys.celery_result(task_id))
            )
            record, answer = replies
        else:
            record, meta, answer = await pipe.execute()
        return (record, cast(bytes | None, meta)), place_of(answer)

    async def cancel(self, cancels: Sequence[tuple[str, TaskState]]) -> None:
        """Cancel each task, now in the (not final) state given with it.

        The cancel flag always (a worker drops a flagged task before calling the endpoint). A
        queued task gets Celery's ``REVOKED`` result at once, so plain Celery clients see the
        cancellation too, and gives back its hold of its tenant's day budget; a running or
        retrying one is announced on the cancel channel, so the worker running it aborts its
        endpoint call. With the results apart, the flag is written
        first: a crash between the two leaves a flagged task that the worker drops at its start.
        """
        pipe = self.client.pipeline(transaction=True)
        results_pipe = self.results.pipeline(transaction=False) if self.apart else pipe
        revoked = 0
        for task_id, state in cancels:
            pipe.hset(keys.task_record(task_id), records.F_CANCEL, "1")
            if state is not TaskState.QUEUED:
                pipe.publish(keys.CANCEL_CHANNEL, task_id)
                continue
            pipe.hset(keys.task_record(task_id), records.F_FINISHED, records.utcnow_iso())
            # Its hold of the day budget comes back now, not when a worker reaches its message.
            await self._give_back(
                keys={"record_key": keys.task_record(task_id)},
                args={"reserved_prefix": keys.reserved_tokens("")},
                client=pipe,
            )
            meta = records.revoked_meta(task_id)
            args = {"meta": meta, "ttl_s": self._result_ttl_s, "success": states.SUCCESS}
            await self._revoke(
                keys={"result_key": keys.celery_result(task_id)}, args=args, client=results_pipe
            )
            revoked += 1
        await pipe.execute()
        if revoked and results_pipe is not pipe:
            await results_pipe.execute()

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.apart:
            await self.results.aclose()
