"""The API's producer: :class:`~api_producer.producers.direct.DirectProducer`'s submissions on
asyncio.

The same records, messages and events in the same single transaction, sent from the event loop
on the API's asyncio Redis client, so a request costs no hop to a worker thread.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence

import redis
import redis.asyncio as aioredis

from api_producer.producers.direct import describe_redis_error
from api_producer.producers.enqueue import (
    Accepted,
    Command,
    EnqueueError,
    EnqueuePlan,
    claim_key,
    claim_value,
    earlier_answer,
    request_digest,
)
from worker.contract import GenerationRequest
from worker.settings import Settings


class AsyncProducer:
    """Enqueue ``genqueue.generate`` tasks from a coroutine.

    :param settings: genqueue's settings (retention times).
    :param client: an asyncio Redis client on genqueue's Redis.
    :param plan: the commands of a submission (shared with the process's DirectProducer).
    """

    def __init__(self, settings: Settings, client: aioredis.Redis, plan: EnqueuePlan) -> None:
        self._settings = settings
        self._redis = client
        self._plan = plan

    async def submit_many(
        self, requests: Sequence[GenerationRequest], idempotency_key: str | None = None
    ) -> Accepted:
        """Enqueue all of ``requests`` or none of them (see ``DirectProducer.submit_many``)."""
        payloads = [request.to_payload() for request in requests]
        task_ids = [str(uuid.uuid4()) for _ in requests]
        claim: str | None = None
        if idempotency_key is not None:
            claimed = await self._claim(idempotency_key, request_digest(payloads), task_ids)
            if isinstance(claimed, Accepted):
                return claimed
            claim = claimed
        try:
            await self._transaction(self._plan.accept(task_ids, requests, payloads))
        except (redis.RedisError, OSError) as err:
            await self._forget_claim(claim)
            raise EnqueueError(f"could not store the task: {describe_redis_error(err)}") from err
        self._plan.sent(requests)
        return Accepted(task_ids=task_ids)

    async def _transaction(self, commands: list[Command]) -> None:
        pipe = self._redis.pipeline(transaction=True)
        for command in commands:
            pipe.execute_command(*command)
        await pipe.execute()

    async def _claim(self, key: str, digest: str, task_ids: list[str]) -> Accepted | str:
        """Claim the idempotency key for ``task_ids``, or the earlier call's answer."""
        redis_key = claim_key(key)
        value = claim_value(digest, task_ids)
        try:
            ttl_s = self._settings.idempotency_ttl_s
            if await self._redis.set(redis_key, value, nx=True, ex=ttl_s):
                return redis_key
            existing = await self._redis.get(redis_key)
        except (redis.RedisError, OSError) as err:
            raise EnqueueError(f"could not store the task: {describe_redis_error(err)}") from err
        if existing is None:  # expired between the two commands
            return await self._claim(key, digest, task_ids)
        return earlier_answer(existing, digest)

    async def _forget_claim(self, claim: str | None) -> None:
        if claim is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await self._redis.delete(claim)
