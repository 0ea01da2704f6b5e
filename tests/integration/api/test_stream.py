"""``GET /v1/tasks/{id}/stream``: a task's tokens as they come, through a real worker process
and the simulator's text-generation-webui streams."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from api_producer.client import GenQueueClient, Restart
from tests.conftest import ROOT
from tests.integration.api.conftest import API_KEY
from worker.contract import TaskStatus

AUTH = {"Authorization": f"Bearer {API_KEY}"}
pytestmark = pytest.mark.timeout(60)


def read_events(response: requests.Response) -> list[tuple[str, str | None, Any]]:
    """(event, id, data) of each server-sent event until ``done``."""
    return list(read_events_iter(response))


def follow(api_url: str, task_id: str, **headers: str) -> list[tuple[str, str | None, Any]]:
    """The events of the task's stream but ``queued`` (its place while it waits: see
    tests/integration/api/test_queue_position.py)."""
    with requests.get(
        f"{api_url}/v1/tasks/{task_id}/stream", headers={**AUTH, **headers}, stream=True,
        timeout=30,
    ) as response:  # fmt: skip
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        return [event for event in read_events(response) if event[0] != "queued"]


def submit(api_url: str, **body: Any) -> str:
    body.setdefault("prompt", "Tell me a story")
    body.setdefault("params", {"max_tokens": 12, "seed": 3})
    answer = requests.post(f"{api_url}/v1/tasks", json=body, headers=AUTH, timeout=10)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["task_id"])


@pytest.fixture
def service(redis_url, simulator, start_worker, api_factory):
    start_worker(redis_url, simulator.url)
    return api_factory(redis_url, runpod_endpoint_url=simulator.url)


def test_tokens_arrive_one_by_one_while_the_answer_is_generated(service, simulator) -> None:
    simulator.configure(token_interval_s=0.1)
    task_id = submit(service.url, stream=True)
    arrivals: list[float] = []
    with requests.get(
        f"{service.url}/v1/tasks/{task_id}/stream", headers=AUTH, stream=True, timeout=30
    ) as response:
        events: list[tuple[str, str | None, Any]] = []
        for event in _timed(read_events_iter(response), arrivals):
            events.append(event)
    tokens = [data["text"] for name, _, data in events if name == "token"]
    assert len(tokens) == 12
    name, _, done = events[-1]
    assert name == "done" and done["status"] == "succeeded"
    assert "".join(tokens) == done["result"]["text"]
    assert done["result"]["finish_reason"] == "length"
    # No usage in text-generation-webui's stream: counted, a token a piece.
    assert done["result"]["usage"]["completion_tokens"] == 12
    # They came as generated (1.1 s in all), not together at the end.
    assert arrivals[-1] - arrivals[0] > 0.8
    assert simulator.stats()["calls"] == 1


def read_events_iter(response: requests.Response) -> Iterator[tuple[str, str | None, Any]]:
    name, event_id, data = "message", None, ""
    for line in response.iter_lines(chunk_size=1, decode_unicode=True):
        if line.startswith(":"):
            continue
        if line:
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "id":
                event_id = value
            elif field == "data":
                data = value
            continue
        if not data:  # the end of a keep-alive comment
            continue
        yield (name, event_id, json.loads(data))
        if name == "done":
            return
        name, event_id, data = "message", None, ""


def _timed(events: Iterator[Any], arrivals: list[float]) -> Iterator[Any]:
    for event in events:
        arrivals.append(time.monotonic())
        yield event


def test_the_endpoint_is_called_with_stream_true(service, simulator) -> None:
    task_id = submit(service.url, stream=True)
    follow(service.url, task_id)
    assert simulator.stats()["last_bodies"][-1]["stream"] is True


def test_a_late_client_gets_everything_and_last_event_id_resumes(service) -> None:
    task_id = submit(service.url, stream=True)
    first = follow(service.url, task_id)
    late = follow(service.url, task_id)
    assert first == late
    tokens = [(event_id, data["text"]) for name, event_id, data in first if name == "token"]
    resumed = follow(service.url, task_id, **{"Last-Event-ID": tokens[4][0]})
    assert [(i, d["text"]) for n, i, d in resumed if n == "token"] == tokens[5:]
    assert resumed[-1][0] == "done"


def test_a_client_of_a_queued_task_waits_for_it(
    redis_url, simulator, start_worker, api_factory
) -> None:
    api = api_factory(redis_url, runpod_endpoint_url=simulator.url)
    task_id = submit(api.url, stream=True)
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.extend(follow(api.url, task_id)))
    reader.start()
    time.sleep(1.5)  # queued: no worker yet
    assert not got
    start_worker(redis_url, simulator.url)
    reader.join(30)
    assert got[-1][0] == "done" and got[-1][2]["status"] == "succeeded"
    assert "".join(d["text"] for n, _, d in got if n == "token") == got[-1][2]["result"]["text"]


def test_a_broken_stream_restarts_and_the_client_is_told(service, simulator) -> None:
    simulator.script("break_stream")
    task_id = submit(service.url, stream=True)
    events = follow(service.url, task_id)
    names = [name for name, _, _ in events]
    restart = names.index("restart")
    assert names[:restart] == ["token", "token"]
    after = [data["text"] for name, _, data in events[restart + 1 :] if name == "token"]
    done = events[-1][2]
    assert done["status"] == "succeeded" and done["attempts"] == 2
    assert "".join(after) == done["result"]["text"]


def test_an_empty_stream_is_an_error_not_an_empty_success(service, simulator) -> None:
    simulator.script(*["empty_stream"] * 10)
    task_id = submit(service.url, stream=True)
    done = follow(service.url, task_id)[-1][2]
    assert done["status"] == "failed"
    assert "without a chunk" in done["error"]["message"]


def test_a_task_that_does_not_stream_arrives_as_one_token(service, simulator) -> None:
    task_id = submit(service.url)
    events = follow(service.url, task_id)
    assert [name for name, _, _ in events] == ["token", "done"]
    assert events[0][2]["text"] == events[1][2]["result"]["text"]
    assert "stream" not in simulator.stats()["last_bodies"][-1]


def test_an_unknown_task_is_404(service) -> None:
    answer = requests.get(f"{service.url}/v1/tasks/nope/stream", headers=AUTH, timeout=10)
    assert answer.status_code == 404
    answer = requests.get(f"{service.url}/v1/tasks/nope/stream", timeout=10)
    assert answer.status_code == 401


def test_python_client_stream_and_cli_submit_stream(service, simulator, tmp_path) -> None:
    simulator.script("break_stream")
    with GenQueueClient(service.url, api_key=API_KEY) as client:
        task_id = client.submit({"prompt": "x", "params": {"max_tokens": 5}, "stream": True})
        items = list(client.stream(task_id))
    restart = next(i for i, item in enumerate(items) if isinstance(item, Restart))
    final = items[-1]
    assert isinstance(final, TaskStatus) and final.result is not None
    assert "".join(str(item) for item in items[restart + 1 : -1]) == final.result.text
    env = {**os.environ, "GENQUEUE_API_KEYS": API_KEY, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "genqueue", "submit", "Tell me", "--max-tokens", "6", "--stream",
         "--api", service.url],
        capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == 6
    assert simulator.stats()["last_bodies"][-1]["stream"] is True
