"""A message lost between Redis and a worker (a kill right after BRPOP) is sent again."""

from __future__ import annotations

import pytest
from celery import Celery

from api_producer.producers.direct import DirectProducer
from worker.contract import GenerationRequest
from worker.settings import Settings

pytestmark = pytest.mark.timeout(90)


def test_a_task_whose_message_vanished_runs_anyway(
    redis_url, redis_client, simulator, start_worker, celery_client: Celery
) -> None:
    producer = DirectProducer(Settings(redis_url=redis_url))
    task_id = producer.submit(GenerationRequest.model_validate({"prompt": "lost", "priority": 7}))
    producer.close()
    # What a worker killed right after popping the message leaves: no message anywhere.
    queues = [
        k for k in redis_client.scan_iter(match="genqueue*") if redis_client.type(k) == b"list"
    ]
    assert len(queues) == 1 and redis_client.llen(queues[0]) == 1
    redis_client.delete(*queues)
    start_worker(
        redis_url, simulator.url, GENQUEUE_VISIBILITY_TIMEOUT_S=5, GENQUEUE_HEARTBEAT_INTERVAL_S=1
    )
    assert celery_client.AsyncResult(task_id).get(timeout=60)["text"]
    assert simulator.stats()["calls"] == 1
