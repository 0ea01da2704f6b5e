"""Concurrent requests with one ``Idempotency-Key``: a request never answers with a task that
the first has not stored yet, nor with one whose enqueue then failed."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests

from api_producer.producers import submission
from api_producer.producers.direct import DirectProducer, IdempotencyInUse
from api_producer.producers.enqueue import claim_key, claim_value, request_digest
from tests.integration.reliability.conftest import API_KEY, queued_messages
from worker.contract import GenerationRequest
from worker.settings import Settings

pytestmark = pytest.mark.timeout(90)

BODY = {"prompt": "How can I make a cake?", "params": {"max_tokens": 6}}
AUTH = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": "race-1"}
CONCURRENT = 24


def burst(url: str, headers: dict[str, str]) -> list[requests.Response]:
    """``CONCURRENT`` submissions released together."""
    start = threading.Barrier(CONCURRENT)

    def one(_: int) -> requests.Response:
        start.wait()
        return requests.post(f"{url}/v1/tasks", json=BODY, headers=headers, timeout=30)

    with ThreadPoolExecutor(CONCURRENT) as pool:
        return list(pool.map(one, range(CONCURRENT)))


def test_concurrent_requests_with_one_key_get_one_stored_task(
    own_redis: Any, api_factory: Any
) -> None:
    api = api_factory(own_redis.url)
    answers = burst(api.url, AUTH)
    assert [a.status_code for a in answers] == [202] * CONCURRENT
    assert len({a.json()["task_id"] for a in answers}) == 1
    task_id = answers[0].json()["task_id"]
    status = requests.get(f"{api.url}/v1/tasks/{task_id}", headers=AUTH, timeout=10)
    assert status.status_code == 200
    assert queued_messages(redis.Redis.from_url(own_redis.url)) == 1


def test_no_202_for_a_task_whose_enqueue_failed(own_redis: Any, api_factory: Any) -> None:
    """The API's Redis user may write idempotency keys but no task: every enqueue fails after
    its claim, so no request may answer 202 (before: the claim of a first request that then
    failed was handed to the others as their task)."""
    admin = redis.Redis.from_url(own_redis.url)
    admin.acl_setuser(
        "api", enabled=True, passwords=["+api-pw"], keys=["genqueue:idem:*"], commands=["+@all"]
    )
    url = f"redis://api:api-pw@{own_redis.host}:{own_redis.port}/0"
    api = api_factory(url)
    answers = burst(api.url, AUTH)
    assert [a.status_code for a in answers] == [503] * CONCURRENT, [a.text for a in answers]
    assert admin.keys("genqueue:idem:*") == []  # the failed claims are withdrawn
    assert queued_messages(admin) == 0


def pending_claim(client: redis.Redis, key: str, request: GenerationRequest) -> str:
    """The claim a first request with ``key`` holds until its transaction ran."""
    redis_key = claim_key(key)
    digest = request_digest([request.to_payload()])
    client.set(redis_key, claim_value(digest, ["first-task"], pending=True), ex=60)
    return redis_key


def test_a_second_request_waits_for_the_first_and_then_gives_up(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(submission, "KEY_IN_USE_WAIT_S", 0.5)
    producer = DirectProducer(Settings(redis_url=redis_url))
    client = redis.Redis.from_url(redis_url)
    request = GenerationRequest(prompt="hi")
    pending_claim(client, "k-1", request)
    started = time.monotonic()
    with pytest.raises(IdempotencyInUse, match="still being enqueued"):
        producer.submit_many([request], idempotency_key="k-1")
    assert 0.5 <= time.monotonic() - started < 3
    assert queued_messages(client) == 0
    producer.close()


def test_a_second_request_claims_the_key_when_the_first_withdraws_it(redis_url: str) -> None:
    producer = DirectProducer(Settings(redis_url=redis_url))
    client = redis.Redis.from_url(redis_url)
    request = GenerationRequest(prompt="hi")
    redis_key = pending_claim(client, "k-2", request)
    threading.Timer(0.3, client.delete, [redis_key]).start()  # the first one failed
    accepted = producer.submit_many([request], idempotency_key="k-2")
    assert not accepted.replayed and accepted.task_ids != ["first-task"]
    assert queued_messages(client) == 1
    stored = json.loads(client.get(redis_key) or b"{}")
    assert stored["task_ids"] == accepted.task_ids and "pending" not in stored
    again = producer.submit_many([request], idempotency_key="k-2")
    assert again.replayed and again.task_ids == accepted.task_ids
    producer.close()
