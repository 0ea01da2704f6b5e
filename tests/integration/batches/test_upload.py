"""`POST /v1/batches` reads its body as it arrives: what it reads, parses and charges.

The app is driven over ASGI with a body handed over a chunk at a time, so a test sees how
much of it the API pulled; Redis is real.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from api_producer.batches import parsing as batches_parsing
from api_producer.main import create_app
from tests.integration.api.conftest import API_KEY
from tests.integration.batches.conftest import jsonl, line, queue_depth
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)


@dataclass
class Upload:
    """One request's body, a chunk per ``receive()``; ``hold`` stops it after the first."""

    chunks: list[bytes]
    hold: asyncio.Event | None = None
    pulled: int = 0
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    async def receive(self) -> dict[str, Any]:
        if self.hold is not None and self.pulled == 1:
            await self.hold.wait()
        if self.pulled >= len(self.chunks):
            await asyncio.Event().wait()  # the client never hangs up: the app must not ask
        self.pulled += 1
        more = self.pulled < len(self.chunks)
        return {"type": "http.request", "body": self.chunks[self.pulled - 1], "more_body": more}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    def detail(self) -> str:
        return str(json.loads(self.body)["detail"])


def scope(path: str = "/v1/batches") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/x-ndjson"),
            (b"authorization", f"Bearer {API_KEY}".encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


def app_for(redis_url: str, **fields: Any) -> Any:
    return create_app(Settings(redis_url=redis_url, api_keys=API_KEY, **fields))


async def post(app: Any, upload: Upload) -> Upload:
    await asyncio.wait_for(app(scope(), upload.receive, upload.send), 30)
    return upload


def one_line_a_chunk(items: list[Any]) -> list[bytes]:
    return [jsonl([item]) for item in items]


@pytest.fixture
def json_loads_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ``json.loads`` the batch module makes: the lines it parsed."""
    calls: list[str] = []
    real = json.loads

    class CountingJson:
        def __getattr__(self, name: str) -> Any:
            return getattr(json, name)

        @staticmethod
        def loads(text: Any, **kwargs: Any) -> Any:
            calls.append(text if isinstance(text, str) else text.decode())
            return real(text, **kwargs)

    monkeypatch.setattr(batches_parsing, "json", CountingJson())
    return calls


def test_a_batch_over_the_line_limit_is_refused_without_reading_the_rest(
    redis_url: str, redis_client: redis.Redis, json_loads_calls: list[str]
) -> None:
    app = app_for(redis_url, batch_max_requests=3)
    chunks = one_line_a_chunk([line(i) for i in range(1000)])
    upload = asyncio.run(post(app, Upload(chunks)))
    assert upload.status == 422
    assert "at most 3 requests, this one has more (line 4 is past that)" in upload.detail()
    assert upload.pulled == 4  # the fourth line refused it: 996 chunks were never read
    assert len(json_loads_calls) <= 3  # and nothing past the limit was parsed
    assert queue_depth(redis_client) == 0


def test_a_rate_limited_key_is_refused_before_its_lines_are_parsed(
    redis_url: str, redis_client: redis.Redis, json_loads_calls: list[str]
) -> None:
    app = app_for(redis_url, api_rate_limit_per_minute=5)
    chunks = one_line_a_chunk([line(i) for i in range(100)])

    async def scenario() -> tuple[Upload, int, Upload]:
        first = await post(app, Upload([jsonl(line(i) for i in range(5))]))
        parsed_before = len(json_loads_calls)
        return first, parsed_before, await post(app, Upload(chunks))

    first, parsed_before, refused = asyncio.run(scenario())
    assert first.status == 202, first.body
    assert parsed_before == 5
    assert refused.status == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.pulled == 1  # refused on the first chunk: the rest never read
    assert len(json_loads_calls) == parsed_before  # and no line of it parsed
    assert queue_depth(redis_client) == 5


def test_a_refused_batch_is_refunded(redis_url: str, redis_client: redis.Redis) -> None:
    app = app_for(redis_url, api_rate_limit_per_minute=10)
    bad = [line(i) for i in range(8)] + ["{oops"]

    async def scenario() -> tuple[Upload, list[int], Upload]:
        refused = await post(app, Upload(one_line_a_chunk(bad)))
        used = [
            int(redis_client.get(key) or 0) for key in redis_client.scan_iter("genqueue:rate:*")
        ]
        return refused, used, await post(app, Upload([jsonl(line(i) for i in range(10))]))

    refused, used, accepted = asyncio.run(scenario())
    assert refused.status == 422 and "line 9: not JSON" in refused.detail()
    # Its nine lines were charged as they came, and given back when it was refused.
    assert used == [0]
    assert accepted.status == 202, accepted.body
    assert queue_depth(redis_client) == 10


def test_uploads_past_the_cap_get_503_with_retry_after(
    redis_url: str, redis_client: redis.Redis
) -> None:
    app = app_for(redis_url, batch_max_concurrent_uploads=1)

    async def scenario() -> tuple[Upload, Upload, Upload]:
        hold = asyncio.Event()
        slow = Upload(one_line_a_chunk([line(i) for i in range(3)]), hold=hold)
        first = asyncio.create_task(post(app, slow))
        await until(lambda: slow.pulled == 1)
        second = await post(app, Upload([jsonl([line(9)])]))
        hold.set()
        await first
        third = await post(app, Upload([jsonl([line(10)])]))  # the slot is free again
        return slow, second, third

    slow, second, third = asyncio.run(scenario())
    assert second.status == 503
    assert second.headers["retry-after"] == "5"
    assert "GENQUEUE_BATCH_MAX_CONCURRENT_UPLOADS" in second.detail()
    assert second.pulled == 0  # refused before its body was read
    assert slow.status == 202 and third.status == 202
    assert queue_depth(redis_client) == 4


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)
