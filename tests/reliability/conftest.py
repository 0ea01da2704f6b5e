"""The fault suite: the API fixtures, and a Redis of the test's own that it can stop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from genqueue.embedded_redis import EmbeddedRedis
from tests.api.conftest import API_KEY, api_factory, auth, queued_messages

__all__ = ["API_KEY", "api_factory", "auth", "own_redis", "queued_messages"]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """An embedded redis-server with AOF on, that the test may stop and start again."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    yield server
    server.stop()
