"""`/v1/batches` on a real Redis, without workers: accepting, refusing, reading, cancelling."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis
import requests

from api_producer.batches import BatchRules, BatchStore, parse_batch
from api_producer.batches import storage as batches_storage
from api_producer.producers.direct import DirectProducer, EnqueueError
from tests.integration.batches.conftest import (
    get_json,
    jsonl,
    line,
    post_batch,
    queue_depth,
    results,
)
from worker import keys
from worker.delivery import records
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)


def nothing_stored(client: redis.Redis) -> bool:
    return (
        queue_depth(client) == 0
        and not list(client.scan_iter(match="genqueue:task:*"))
        and not list(client.scan_iter(match="genqueue:batch:*"))
    )


def test_accepted_stored_and_read_back(api, auth, redis_client) -> None:
    response = post_batch(api, jsonl(line(i) for i in range(5)), auth)
    assert response.status_code == 202, response.text
    answer = response.json()
    batch_id = answer["batch_id"]
    assert answer == {"batch_id": batch_id, "status": "queued", "total": 5}
    assert response.headers["Location"] == f"/v1/batches/{batch_id}"
    assert queue_depth(redis_client) == 5

    status = get_json(api, f"/v1/batches/{batch_id}", auth)
    assert status["status"] == "queued" and status["total"] == 5
    assert status["counts"] == {
        "queued": 5,
        "running": 0,
        "retrying": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert status["created_at"].endswith("Z")

    lines = results(api, batch_id, auth)
    assert [item["custom_id"] for item in lines] == [f"req-{i}" for i in range(5)]
    assert {item["status"] for item in lines} == {"queued"}
    assert set(lines[0]) == {"custom_id", "task_id", "status", "result", "error"}
    # Every task is an ordinary task, readable by its id.
    task = get_json(api, f"/v1/tasks/{lines[3]['task_id']}", auth)
    assert task["status"] == "queued"

    # Both batch keys expire with the results.
    ttl = Settings(redis_url="redis://x").result_ttl_s
    for key in (keys.batch(batch_id), keys.batch_tasks(batch_id)):
        assert 0 < redis_client.ttl(key) <= ttl


def test_json_form_and_priorities(api, auth, redis_client) -> None:
    body = {"requests": [line(1), line(2, priority=9), line(3, priority=5)]}
    response = requests.post(f"{api.url}/v1/batches", json=body, headers=auth, timeout=30)
    assert response.status_code == 202, response.text
    # Celery on Redis serves 0 first: genqueue's 9 is list "genqueue", 5 is 4, the default 2 is 7.
    assert redis_client.llen("genqueue") == 1
    assert redis_client.llen("genqueue\x06\x164") == 1
    assert redis_client.llen("genqueue\x06\x167") == 1


def test_invalid_line_refuses_the_batch(api, auth, redis_client) -> None:
    body = jsonl([line(1), line(2), line(3, params={"max_tokens": 0}), "", "{oops"])
    response = post_batch(api, body, auth)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "line 3: params.max_tokens" in detail and "line 5: not JSON" in detail
    assert "line 1" not in detail
    assert nothing_stored(redis_client)


def test_duplicate_custom_id_is_422(api, auth, redis_client) -> None:
    response = post_batch(api, jsonl([line(1), line(2), line(3, custom_id="req-1")]), auth)
    assert response.status_code == 422
    assert "line 3: custom_id 'req-1' is already on line 1" in response.json()["detail"]
    assert nothing_stored(redis_client)


def test_too_many_requests_unsupported_type_and_empty(api_factory, redis_url, auth, redis_client):
    api = api_factory(redis_url, batch_max_requests=3)
    too_many = post_batch(api, jsonl(line(i) for i in range(4)), auth)
    assert too_many.status_code == 422
    assert "at most 3 requests, this one has more (line 4" in too_many.json()["detail"]
    plain = post_batch(api, jsonl([line(1)]), auth, **{"Content-Type": "text/plain"})
    assert plain.status_code == 415 and "application/x-ndjson" in plain.json()["detail"]
    assert post_batch(api, b"\n\n", auth).status_code == 422
    assert post_batch(api, b"\xff\xfe\n", auth).status_code == 400
    assert nothing_stored(redis_client)


def test_batches_have_their_own_body_limit(api_factory, redis_url, auth, redis_client) -> None:
    api = api_factory(redis_url, api_max_body_bytes=1024, batch_max_body_bytes=8192)
    body = jsonl(line(i) for i in range(40))  # about 4 KiB: over the API's limit, under the batch's
    assert 1024 < len(body) < 8192
    assert post_batch(api, body, auth).status_code == 202
    task = {"prompt": "x" * 2000}
    refused = requests.post(f"{api.url}/v1/tasks", json=task, headers=auth, timeout=10)
    assert refused.status_code == 413
    too_big = post_batch(api, jsonl(line(i) for i in range(100)), auth)
    assert too_big.status_code == 413
    assert "larger than 8192 bytes" in too_big.json()["detail"]


def test_404_and_401(api, auth, redis_client) -> None:
    for method, path in [
        ("GET", "/v1/batches/batch_nope"),
        ("GET", "/v1/batches/batch_nope/results"),
        ("DELETE", "/v1/batches/batch_nope"),
    ]:
        response = requests.request(method, f"{api.url}{path}", headers=auth, timeout=10)
        assert response.status_code == 404, (method, path)
        assert response.json() == {"detail": "no batch batch_nope"}
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            denied = requests.request(method, f"{api.url}{path}", headers=headers, timeout=10)
            assert denied.status_code == 401
    denied = post_batch(api, jsonl([line(1)]), {"Authorization": "Bearer wrong"})
    assert denied.status_code == 401
    assert nothing_stored(redis_client)


def test_cancel_a_queued_batch(api, auth, redis_client) -> None:
    batch_id = post_batch(api, jsonl(line(i) for i in range(20)), auth).json()["batch_id"]
    response = requests.delete(f"{api.url}/v1/batches/{batch_id}", headers=auth, timeout=30)
    assert response.status_code == 200
    status = response.json()
    assert status["status"] == "cancelled"
    assert status["counts"]["cancelled"] == 20 and status["counts"]["queued"] == 0
    lines = results(api, batch_id, auth)
    assert {item["status"] for item in lines} == {"cancelled"}
    assert lines[0]["error"] == {"type": "cancelled", "message": "the task was cancelled"}
    # Plain Celery clients see the cancellation too.
    meta = json.loads(redis_client.get(keys.celery_result(lines[0]["task_id"])))
    assert meta["status"] == "REVOKED"
    # Cancelling again changes nothing.
    again = requests.delete(f"{api.url}/v1/batches/{batch_id}", headers=auth, timeout=30)
    assert again.json()["counts"]["cancelled"] == 20


def test_a_forgotten_task_is_reported_missing(api, auth, redis_client) -> None:
    batch_id = post_batch(api, jsonl(line(i) for i in range(3)), auth).json()["batch_id"]
    task_id = results(api, batch_id, auth)[1]["task_id"]
    redis_client.delete(keys.task_record(task_id))
    lines = results(api, batch_id, auth)
    assert lines[1]["status"] == "failed" and lines[1]["error"]["type"] == "missing"
    assert get_json(api, f"/v1/batches/{batch_id}", auth)["counts"]["failed"] == 1


def test_a_failure_midway_withdraws_the_sent_chunks(redis_url, redis_client, monkeypatch) -> None:
    """The second chunk fails: the first chunk's tasks are cancelled, no batch is stored."""
    settings = Settings(redis_url=redis_url)
    producer = DirectProducer(settings)
    calls = 0
    submit_many = producer.submit_many

    def failing(requests_, idempotency_key=None, reservation=None):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise EnqueueError("could not send the task: Redis is unreachable")
        return submit_many(requests_, idempotency_key, reservation)

    monkeypatch.setattr(producer, "submit_many", failing)
    monkeypatch.setattr(batches_storage, "ENQUEUE_CHUNK", 4)
    rules = BatchRules(max_requests=100, default_priority=2)
    lines = parse_batch(jsonl(line(i) for i in range(10)), "application/x-ndjson", rules)

    async def create() -> None:
        store = BatchStore.from_settings(settings, producer)
        try:
            await store.create(lines)
        finally:
            await store.aclose()

    with pytest.raises(EnqueueError):
        asyncio.run(create())
    producer.close()
    task_keys = list(redis_client.scan_iter(match="genqueue:task:*"))
    assert len(task_keys) == 4
    for key in task_keys:
        task_id = key.decode().rsplit(":", 1)[1]
        record = redis_client.hgetall(key)
        assert records.status_from(task_id, record, None).status.value == "cancelled"
    assert not list(redis_client.scan_iter(match="genqueue:batch:*"))


def test_a_polled_serverless_task_counts_as_running_as_its_status_says(
    api, auth, redis_client
) -> None:
    """A task polling its serverless job is in Celery's RETRY state; both views say running."""
    batch_id = post_batch(api, jsonl([line(1)]), auth).json()["batch_id"]
    task_id = results(api, batch_id, auth)[0]["task_id"]
    # What a worker writes while it polls a submitted serverless job between attempts.
    redis_client.hset(keys.task_record(task_id), records.F_JOB, "job-1")
    redis_client.set(keys.celery_result(task_id), json.dumps({"status": "RETRY", "result": None}))
    task = get_json(api, f"/v1/tasks/{task_id}", auth)
    batch = get_json(api, f"/v1/batches/{batch_id}", auth)
    assert task["status"] == "running"
    assert batch["counts"]["running"] == 1 and batch["counts"]["retrying"] == 0
    assert batch["status"] == "running"
    assert results(api, batch_id, auth)[0]["status"] == "running"
