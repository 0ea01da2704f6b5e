"""The API's producer: :class:`~api_producer.producers.direct.DirectProducer`'s submissions on
asyncio.

The same steps (:mod:`api_producer.producers.submission`), run from the event loop on the API's
asyncio Redis client, so a request costs no hop to a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from api_producer.producers import replication, submission
from api_producer.producers.enqueue import Accepted, EnqueuePlan, Reservation
from api_producer.producers.submission import Step
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
        self._wait = replication.SubmitWait(settings)

    async def submit_many(
        self,
        requests: Sequence[GenerationRequest],
        idempotency_key: str | None = None,
        reservation: Reservation | None = None,
    ) -> Accepted:
        """Enqueue all of ``requests`` or none of them (:func:`submission.submit`)."""
        ttl_s = self._settings.idempotency_ttl_s
        steps = submission.submit(self._plan, requests, idempotency_key, ttl_s, reservation)
        return await submission.arun(steps, self._execute)

    async def _execute(self, step: Step) -> Any:
        assert not step.results, "a submission's steps all run on the broker's Redis"
        if not step.transaction:
            return await self._redis.execute_command(*step.commands[0])
        pipe = self._redis.pipeline(transaction=True)
        for command in step.commands:
            pipe.execute_command(*command)
        answer = await pipe.execute()
        replicas = self._wait.replicas()
        if replicas:
            reached = await self._redis.execute_command("WAIT", replicas, self._wait.timeout_ms)
            self._wait.reached(int(reached))
        return answer
