"""The fault suite: the API fixtures, and a Redis of the test's own that it can stop."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from genqueue.embedded_redis import EmbeddedRedis
from tests.integration.api.conftest import API_KEY, api_factory, auth, queued_messages

__all__ = ["API_KEY", "api_factory", "auth", "own_redis", "queued_messages", "send", "wait_for"]


def send(client: Any, prompt: str = "hi", **request: Any) -> Any:
    """``genqueue.generate`` through a plain Celery client."""
    return client.send_task("genqueue.generate", kwargs={"request": {"prompt": prompt, **request}})


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """An embedded redis-server with AOF on, that the test may stop and start again."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    yield server
    server.stop()
