"""A streamed task counts its prompt: the worker asks the server for usage in the stream
(``stream_options.include_usage``) and, from a server that streams none, estimates the prompt
(as the API's token budget does); the same prompt costs the same streamed or not."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import requests

from tests.integration.api.conftest import API_KEY
from worker.contract import CHARS_PER_TOKEN, estimate_tokens

AUTH = {"Authorization": f"Bearer {API_KEY}"}
BODY = {"prompt": "Tell me a story about a river", "params": {"max_tokens": 12, "seed": 3}}
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def service(redis_url: str, simulator: Any, start_worker: Any, api_factory: Any) -> Any:
    start_worker(redis_url, simulator.url)
    return api_factory(redis_url, runpod_endpoint_url=simulator.url)


def usage_of(url: str, **body: Any) -> dict[str, int]:
    answer = requests.post(f"{url}/v1/tasks", json={**BODY, **body}, headers=AUTH, timeout=10)
    assert answer.status_code == 202, answer.text
    task_id = answer.json()["task_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = requests.get(f"{url}/v1/tasks/{task_id}?wait=10", headers=AUTH, timeout=20).json()
        if status["status"] == "succeeded":
            return dict(status["result"]["usage"])
        assert status["status"] in ("queued", "running"), status
    raise AssertionError("the task did not finish")


def test_the_same_prompt_costs_the_same_streamed_or_not(service: Any, simulator: Any) -> None:
    plain = usage_of(service.url)
    streamed = usage_of(service.url, stream=True)
    assert streamed == plain
    assert streamed["prompt_tokens"] > 0
    sent = simulator.stats()["last_bodies"][-1]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


def test_a_server_that_streams_no_usage_gets_the_prompt_estimated(
    service: Any, simulator: Any
) -> None:
    simulator.configure(stream_usage=False)  # an older text-generation-webui
    streamed = usage_of(service.url, stream=True)
    prompt = simulator.stats()["last_bodies"][-1]["prompt"]
    assert streamed["prompt_tokens"] == math.ceil(len(prompt) / CHARS_PER_TOKEN) > 0
    assert streamed["total_tokens"] == streamed["prompt_tokens"] + streamed["completion_tokens"]


def test_the_estimate_is_the_one_of_the_token_budget() -> None:
    from api_producer import quota

    assert quota.CHARS_PER_TOKEN == CHARS_PER_TOKEN
    assert [estimate_tokens(n) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]
