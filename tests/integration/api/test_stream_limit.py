"""``GENQUEUE_API_MAX_STREAMS`` holds under a burst: a stream counts itself as it is admitted,
before its answer starts, so requests arriving together cannot all pass the check."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.integration.api.conftest import API_KEY

pytestmark = pytest.mark.timeout(60)

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_STREAMS = 2
BURST = 12


def burst(open_one: Callable[[], requests.Response]) -> list[requests.Response]:
    """``BURST`` streams opened together; the answers (the admitted ones still open)."""
    start = threading.Barrier(BURST)

    def one(_: int) -> requests.Response:
        start.wait()
        return open_one()

    with ThreadPoolExecutor(BURST) as pool:
        return list(pool.map(one, range(BURST)))


def queued_task(url: str) -> str:
    answer = requests.post(f"{url}/v1/tasks", json={"prompt": "hi"}, headers=AUTH, timeout=10)
    assert answer.status_code == 202
    return str(answer.json()["task_id"])


def codes(answers: list[requests.Response]) -> list[int]:
    return sorted(answer.status_code for answer in answers)


def test_a_burst_of_streams_gets_at_most_the_limit(api_factory: Any, redis_url: str) -> None:
    api = api_factory(redis_url, api_max_streams=MAX_STREAMS)
    task_id = queued_task(api.url)  # no worker: it stays queued, its streams stay open
    stream_url = f"{api.url}/v1/tasks/{task_id}/stream"
    answers = burst(lambda: requests.get(stream_url, headers=AUTH, stream=True, timeout=10))
    assert codes(answers) == [200] * MAX_STREAMS + [429] * (BURST - MAX_STREAMS)
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["Retry-After"] == "1"
    for answer in answers:
        answer.close()
    # The closed streams' places are free again.
    deadline = time.monotonic() + 10
    while True:
        again = requests.get(stream_url, headers=AUTH, stream=True, timeout=10)
        again.close()
        if again.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again.status_code == 200


def test_a_burst_of_openai_streams_gets_at_most_the_limit(api_factory: Any, redis_url: str) -> None:
    api = api_factory(redis_url, api_max_streams=MAX_STREAMS)
    body = {"model": "default", "prompt": "hi", "max_tokens": 4, "stream": True}
    url = f"{api.url}/v1/completions"
    answers = burst(lambda: requests.post(url, json=body, headers=AUTH, stream=True, timeout=10))
    assert codes(answers) == [200] * MAX_STREAMS + [429] * (BURST - MAX_STREAMS)
    for answer in answers:
        answer.close()
