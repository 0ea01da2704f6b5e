"""A token stream's edges: trimmed by its length cap before a client read it (the client is
told, and gets the whole text), and a task whose record expires during a follow (the stream
ends with an error event, never in silence)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis
import requests

from api_producer.client import GenQueueClient, TaskNotFound
from tests.integration.api.conftest import API_KEY
from tests.integration.api.test_stream import read_events_iter
from worker import keys
from worker.delivery import token_stream
from worker.delivery.token_stream import TokenStream

AUTH = {"Authorization": f"Bearer {API_KEY}"}
PIECES = [f"w{i} " for i in range(1500)]
pytestmark = pytest.mark.timeout(60)


def events(url: str, task_id: str, **headers: str) -> list[tuple[str, str | None, Any]]:
    """Every event of the task's stream, up to ``done`` or the stream's end."""
    with requests.get(
        f"{url}/v1/tasks/{task_id}/stream", headers={**AUTH, **headers}, stream=True, timeout=30
    ) as response:
        assert response.status_code == 200, response.text
        return list(read_events_iter(response))


def submit(url: str) -> str:
    body = {"prompt": "hi", "stream": True}
    answer = requests.post(f"{url}/v1/tasks", json=body, headers=AUTH, timeout=10)
    assert answer.status_code == 202
    return str(answer.json()["task_id"])


def succeed(client: redis.Redis, task_id: str, text: str) -> None:
    """The final result, stored as Celery's backend stores it."""
    result = {
        "text": text,
        "finish_reason": "length",
        "model": "m",
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        "latency_ms": 5,
    }
    meta = {"status": "SUCCESS", "result": result, "task_id": task_id, "date_done": None}
    client.set(keys.celery_result(task_id), json.dumps(meta))


@pytest.fixture
def trimmed(api_factory: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A finished task whose stream lost its first pieces to its cap; (url, task id, ids)."""
    monkeypatch.setattr(token_stream, "TOKEN_STREAM_MAXLEN", 200)
    api = api_factory(redis_url)
    task_id = submit(api.url)
    client = redis.Redis.from_url(redis_url)
    writer = TokenStream(client, 3600)
    sink = writer.call(task_id)
    for piece in PIECES:
        sink(piece)
    succeed(client, task_id, "".join(PIECES))
    writer.ended(task_id)
    ids = [entry_id.decode() for entry_id, _ in client.xrange(keys.tokens(task_id))]
    assert client.xlen(keys.tokens(task_id)) < len(PIECES)  # trimmed indeed
    return api.url, task_id, ids


def test_a_late_client_of_a_trimmed_stream_gets_the_whole_text(trimmed: Any) -> None:
    url, task_id, _ = trimmed
    got = events(url, task_id)
    tokens = [data["text"] for name, _, data in got if name == "token"]
    assert tokens == ["".join(PIECES)]  # never a truncated start
    assert got[-1][0] == "done"
    assert got[-1][2]["result"]["text"] == "".join(PIECES)


def test_a_client_resuming_into_the_trimmed_part_restarts_with_the_whole_text(
    trimmed: Any,
) -> None:
    url, task_id, ids = trimmed
    before_the_kept = f"{int(ids[0].split('-')[0]) - 1}-0"  # an id that was trimmed away
    got = events(url, task_id, **{"Last-Event-ID": before_the_kept})
    assert [name for name, _, _ in got] == ["restart", "token", "done"]
    assert got[1][2]["text"] == "".join(PIECES)
    # Resuming after that whole text: nothing more, then done.
    again = events(url, task_id, **{"Last-Event-ID": got[1][1]})
    assert [name for name, _, _ in again] == ["done"]


def test_a_stream_kept_whole_is_sent_piece_by_piece(api_factory: Any, redis_url: str) -> None:
    api = api_factory(redis_url)
    task_id = submit(api.url)
    client = redis.Redis.from_url(redis_url)
    writer = TokenStream(client, 3600)
    sink = writer.call(task_id)
    for piece in PIECES[:50]:
        sink(piece)
    succeed(client, task_id, "".join(PIECES[:50]))
    writer.ended(task_id)
    got = events(api.url, task_id)
    assert [data["text"] for name, _, data in got if name == "token"] == PIECES[:50]


@pytest.mark.parametrize("stream", [True, False])
def test_a_task_that_expires_during_a_follow_ends_with_an_error_event(
    api_factory: Any, redis_url: str, stream: bool
) -> None:
    api = api_factory(redis_url)
    body = {"prompt": "hi", "stream": stream}
    answer = requests.post(f"{api.url}/v1/tasks", json=body, headers=AUTH, timeout=10)
    task_id = answer.json()["task_id"]
    client = redis.Redis.from_url(redis_url)
    with requests.get(
        f"{api.url}/v1/tasks/{task_id}/stream", headers=AUTH, stream=True, timeout=30
    ) as response:
        assert response.status_code == 200
        client.delete(keys.task_record(task_id))  # its retention ran out
        got = list(read_events_iter(response))
    assert got, "the stream ended without an event"
    name, _, data = got[-1]
    assert name == "error"
    assert data["type"] == "task_expired"
    assert task_id in data["message"]


def test_the_python_client_raises_task_not_found_for_an_expired_stream(
    api_factory: Any, redis_url: str
) -> None:
    api = api_factory(redis_url)
    task_id = submit(api.url)
    client = redis.Redis.from_url(redis_url)
    with GenQueueClient(api.url, api_key=API_KEY) as genqueue:
        # Its retention runs out while the client follows it.
        threading.Timer(1.0, client.delete, [keys.task_record(task_id)]).start()
        with pytest.raises(TaskNotFound, match="expired"):
            list(genqueue.stream(task_id))
