"""The HTTP API against a real Redis: status codes, idempotency, batches, cancellation."""

from __future__ import annotations

import time

import pytest
import requests

from genqueue.embedded_redis import free_port
from tests.integration.api.conftest import queued_messages

pytestmark = pytest.mark.timeout(60)

BODY = {
    "prompt": "How can I make a cake?",
    "system": "You are Dolphin, a helpful AI assistant.",
    "template": "chatml",
    "params": {
        "max_tokens": 200,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 10,
        "stop": ["<|im_end|>"],
    },
    "priority": 5,
    "metadata": {"caller": "billing-service"},
}


def post(api, body, headers, path="/v1/tasks"):
    return requests.post(f"{api.url}{path}", json=body, headers=headers, timeout=10)


def test_submit_then_get_queued(api, auth, redis_client) -> None:
    response = post(api, BODY, auth)
    assert response.status_code == 202
    task_id = response.json()["task_id"]
    assert response.json() == {"task_id": task_id, "status": "queued"}
    assert response.headers["Location"] == f"/v1/tasks/{task_id}"
    assert queued_messages(redis_client) == 1
    status = requests.get(f"{api.url}/v1/tasks/{task_id}", headers=auth, timeout=10).json()
    assert status["status"] == "queued"
    assert status["attempts"] == 0
    assert status["metadata"] == {"caller": "billing-service"}
    assert status["created_at"].endswith("Z")
    assert status["result"] is None and status["error"] is None and status["finished_at"] is None


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dGVzdC1rZXktMQ==", "test-key-1"])
def test_401_without_a_valid_key(api, redis_client, header) -> None:
    headers = {"Authorization": header} if header else {}
    response = post(api, BODY, headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "API key" in response.json()["detail"]
    assert requests.get(f"{api.url}/v1/tasks/x", headers=headers, timeout=5).status_code == 401
    assert queued_messages(redis_client) == 0


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({**BODY, "surprise": 1}, "surprise"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "exactly one"),
        ({}, "exactly one"),
        ({"prompt": "a", "priority": 10}, "priority"),
        ({"prompt": "a", "params": {"max_tokens": 0}}, "max_tokens"),
        ({"prompt": "a", "params": {"stream": True}}, "stream"),
        ({"prompt": "a", "template": "nope"}, "unknown template 'nope'"),
        ({"messages": [{"role": "robot", "content": "b"}]}, "role"),
    ],
)
def test_422_for_invalid_input(api, auth, redis_client, body, fragment) -> None:
    response = post(api, body, auth)
    assert response.status_code == 422
    assert fragment in response.text
    assert queued_messages(redis_client) == 0


def test_413_for_a_large_body(api_factory, redis_url, auth, redis_client) -> None:
    api = api_factory(redis_url, api_max_body_bytes=2048)
    response = post(api, {"prompt": "x" * 5000}, auth)
    assert response.status_code == 413
    assert "larger than 2048 bytes" in response.json()["detail"]
    assert queued_messages(redis_client) == 0


def test_404_for_an_unknown_task(api, auth) -> None:
    response = requests.get(f"{api.url}/v1/tasks/never-submitted", headers=auth, timeout=5)
    assert response.status_code == 404
    assert (
        requests.delete(f"{api.url}/v1/tasks/never-submitted", headers=auth, timeout=5).status_code
        == 404
    )


def test_idempotency_key(api, auth, redis_client) -> None:
    headers = {**auth, "Idempotency-Key": "order-42"}
    first = post(api, BODY, headers)
    second = post(api, BODY, headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["task_id"] == second.json()["task_id"]
    other = post(api, {**BODY, "prompt": "Something else"}, headers)
    assert other.status_code == 409
    assert queued_messages(redis_client) == 1
    ttl = max(redis_client.ttl(k) for k in redis_client.scan_iter(match="genqueue:idem:*"))
    assert 0 < ttl <= 86_400


def test_batch_in_order(api, auth, redis_client) -> None:
    bodies = [{"prompt": f"p{i}", "metadata": {"i": i}} for i in range(5)]
    response = post(api, {"requests": bodies}, auth, "/v1/tasks/batch")
    assert response.status_code == 202
    ids = [task["task_id"] for task in response.json()["tasks"]]
    assert len(set(ids)) == 5
    for i, task_id in enumerate(ids):
        status = requests.get(f"{api.url}/v1/tasks/{task_id}", headers=auth, timeout=5).json()
        assert status["metadata"] == {"i": i}
    assert queued_messages(redis_client) == 5


def test_batch_all_or_nothing(api_factory, redis_url, auth, redis_client) -> None:
    api = api_factory(redis_url, api_batch_max=3)
    bad = [{"prompt": "ok"}, {"prompt": "ok"}, {"prompt": "bad", "bogus": True}]
    response = post(api, {"requests": bad}, auth, "/v1/tasks/batch")
    assert response.status_code == 422
    assert "bogus" in response.text
    too_many = post(api, {"requests": [{"prompt": "ok"}] * 4}, auth, "/v1/tasks/batch")
    assert too_many.status_code == 422
    assert "at most 3" in too_many.text
    assert queued_messages(redis_client) == 0
    assert not list(redis_client.scan_iter(match="genqueue:task:*"))


def test_cancel_a_queued_task(api, auth, redis_client) -> None:
    task_id = post(api, BODY, auth).json()["task_id"]
    response = requests.delete(f"{api.url}/v1/tasks/{task_id}", headers=auth, timeout=5)
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["error"]["type"] == "cancelled"
    status = requests.get(f"{api.url}/v1/tasks/{task_id}", headers=auth, timeout=5).json()
    assert status["status"] == "cancelled"
    assert status["finished_at"] is not None


def test_wait_returns_when_the_timeout_passes(api, auth) -> None:
    task_id = post(api, BODY, auth).json()["task_id"]
    started = time.monotonic()
    status = requests.get(f"{api.url}/v1/tasks/{task_id}?wait=1", headers=auth, timeout=10).json()
    elapsed = time.monotonic() - started
    assert status["status"] == "queued"
    assert 0.9 <= elapsed < 5


def test_503_when_redis_is_unreachable(api_factory, auth) -> None:
    api = api_factory(f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    response = post(api, BODY, auth)
    assert response.status_code == 503
    assert (
        response.json()["detail"]
        == "service unavailable: could not store the task: Redis is unreachable"
    )
    assert time.monotonic() - started < 5
    ready = requests.get(f"{api.url}/readyz", timeout=5)
    assert ready.status_code == 503
    assert requests.get(f"{api.url}/healthz", timeout=5).status_code == 200
    assert requests.get(f"{api.url}/v1/tasks/abc", headers=auth, timeout=5).status_code == 503


def test_openapi_is_served(api) -> None:
    schema = requests.get(f"{api.url}/openapi.json", timeout=5).json()
    assert "/v1/tasks" in schema["paths"] and "/v1/tasks/{task_id}" in schema["paths"]
    assert requests.get(f"{api.url}/docs", timeout=5).status_code == 200
