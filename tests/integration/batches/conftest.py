"""Helpers of the batch suite: the served API, batch files, queue depth, waiting."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import redis
import requests

from genqueue.simulator.generation import generate_text
from tests.integration.api.conftest import API_KEY, api, api_factory, auth

__all__ = ["API_KEY", "api", "api_factory", "auth"]

NDJSON = {"Content-Type": "application/x-ndjson"}


def line(index: int, **fields: Any) -> dict[str, Any]:
    """A batch line whose simulated answer is known: raw template, a seed, 8 tokens."""
    body: dict[str, Any] = {
        "custom_id": f"req-{index}",
        "prompt": f"question {index}",
        "template": "raw",
        "params": {"max_tokens": 8, "seed": index},
    }
    body.update(fields)
    return body


def expected_text(index: int) -> str:
    """The simulator's deterministic answer to :func:`line` ``index``."""
    text, _ = generate_text(random.Random(f"{index}:question {index}"), 8, ())
    return text


def jsonl(lines: Iterable[Any]) -> bytes:
    return "".join(
        (item if isinstance(item, str) else json.dumps(item)) + "\n" for item in lines
    ).encode()


def post_batch(api: Any, body: bytes, headers: dict[str, str], **extra: str) -> requests.Response:
    return requests.post(
        f"{api.url}/v1/batches", data=body, headers={**NDJSON, **headers, **extra}, timeout=120
    )


def get_json(api: Any, path: str, headers: dict[str, str]) -> Any:
    response = requests.get(f"{api.url}{path}", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def results(api: Any, batch_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    response = requests.get(f"{api.url}/v1/batches/{batch_id}/results", headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(text) for text in response.text.splitlines()]
    assert len(lines) == int(response.headers["X-Batch-Total"])
    return lines


def queue_depth(client: redis.Redis) -> int:
    """Messages waiting in genqueue's and Celery's queues (every priority list)."""
    total = 0
    for name in ("genqueue", "celery"):
        for key in client.scan_iter(match=f"{name}*", count=1000):
            if key == name.encode() or key.startswith(name.encode() + b"\x06\x16"):
                total += int(client.llen(key))
    return total


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"no {what} within {timeout_s}s")


@pytest.fixture
def batch_status(auth: dict[str, str]) -> Callable[[Any, str], dict[str, Any]]:
    def read(api: Any, batch_id: str) -> dict[str, Any]:
        return dict(get_json(api, f"/v1/batches/{batch_id}", auth))

    return read
