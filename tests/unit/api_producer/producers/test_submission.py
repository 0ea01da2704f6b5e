"""A submission's steps, run by the blocking and the asyncio driver: one error handling."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api_producer.producers import submission
from api_producer.producers.direct import make_plan
from api_producer.producers.enqueue import EnqueueError
from api_producer.producers.submission import Step
from worker.contract import GenerationRequest
from worker.redis_io import connections
from worker.settings import Settings

SETTINGS = Settings(redis_url="redis://127.0.0.1:9/0")
REQUEST = GenerationRequest.model_validate({"prompt": "hello", "template": "raw"})


class Script:
    """Answers each step like Redis would, failing the transaction with ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.steps: list[Step] = []

    def answer(self, step: Step) -> Any:
        self.steps.append(step)
        if step.transaction:
            raise self.error
        return {"SET": True, "DEL": 1}[step.commands[0][0]]

    async def aanswer(self, step: Step) -> Any:
        return self.answer(step)


def steps() -> submission.Steps[Any]:
    client = connections.sync_client(SETTINGS)
    plan = make_plan(SETTINGS, client)
    client.close()
    return submission.submit(plan, [REQUEST], "key-1", 60)


@pytest.mark.parametrize("error", [OSError("reset"), ConnectionError("gone")])
def test_both_drivers_answer_a_failed_transaction_alike(error: BaseException) -> None:
    sync, aio = Script(error), Script(error)
    with pytest.raises(EnqueueError) as caught_sync:
        submission.run(steps(), sync.answer)
    with pytest.raises(EnqueueError) as caught_async:
        asyncio.run(submission.arun(steps(), aio.aanswer))
    assert str(caught_sync.value) == str(caught_async.value)
    assert str(caught_sync.value) == "could not store the task: Redis is unreachable"
    # Claimed the key, tried the transaction, then gave the key back.
    for script in (sync, aio):
        assert [step.transaction for step in script.steps] == [False, True, False]
        claim = script.steps[0].commands[0]
        assert claim[0] == "SET" and "NX" in claim
        assert script.steps[2].commands == [("DEL", claim[1])]
