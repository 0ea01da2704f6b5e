"""Limits at the edge: per-key rate, input sizes, body size. Refused means nothing enqueued."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import requests
from fastapi import HTTPException

from api_producer.auth import hash_key
from api_producer.rate_limit import KEY_TTL_S, WINDOW_S, RateLimiter
from tests.integration.security.conftest import API_KEY, queued_messages
from worker import keys
from worker.tenancy.tenants import Tenant

pytestmark = pytest.mark.timeout(60)

AUTH = {"Authorization": f"Bearer {API_KEY}"}
OTHER_KEY = "second-key-2"
BODY = {"prompt": "How can I make a cake?", "params": {"max_tokens": 20}}


def post(api: Any, body: Any, path: str = "/v1/tasks", headers: Any = None) -> requests.Response:
    return requests.post(f"{api.url}{path}", json=body, headers=headers or AUTH, timeout=30)


def nothing_stored(client: redis.Redis) -> bool:
    return queued_messages(client) == 0 and not list(client.scan_iter(match="genqueue:task:*"))


@pytest.fixture
def same_window() -> Iterator[None]:
    """Keep a test's submissions inside one rate-limit window (not within 5 s of its end)."""
    into_window = time.time() % WINDOW_S
    if into_window > WINDOW_S - 5:
        time.sleep(WINDOW_S - into_window + 0.1)
    yield


# --------------------------------------------------------------------------- rate limit, HTTP


def test_fourth_submission_in_a_minute_is_429(
    api_factory, redis_url, redis_client, same_window
) -> None:
    api = api_factory(redis_url, api_keys=f"{API_KEY},{OTHER_KEY}", api_rate_limit_per_minute=3)
    assert [post(api, BODY).status_code for _ in range(3)] == [202, 202, 202]
    refused = post(api, BODY)
    assert refused.status_code == 429
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= WINDOW_S
    assert "3 tasks per minute" in refused.json()["detail"]
    assert refused.headers["content-type"] == "application/json"
    assert queued_messages(redis_client) == 3
    # The counter is per tenant (a plain key's: named by its digest prefix), and expires.
    caller = "key-" + hash_key(API_KEY)[:8]
    [key] = list(redis_client.scan_iter(match="genqueue:rate:*"))
    assert key.decode() == keys.api_rate(caller, int(time.time() // WINDOW_S))
    assert API_KEY.encode() not in key
    assert redis_client.get(key) == b"3"
    assert 0 < redis_client.ttl(key) <= KEY_TTL_S
    # Another key has its own budget.
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    assert post(api, BODY, headers=other).status_code == 202
    assert queued_messages(redis_client) == 4


def test_a_batch_counts_its_length(api_factory, redis_url, redis_client, same_window) -> None:
    api = api_factory(redis_url, api_rate_limit_per_minute=3)
    assert post(api, {"requests": [BODY, BODY]}, "/v1/tasks/batch").status_code == 202
    refused = post(api, {"requests": [BODY, BODY]}, "/v1/tasks/batch")
    assert refused.status_code == 429
    assert "Retry-After" in refused.headers
    assert queued_messages(redis_client) == 2  # the refused batch enqueued none of its two
    assert post(api, BODY).status_code == 202  # it did not use up the last slot either
    assert post(api, BODY).status_code == 429
    assert queued_messages(redis_client) == 3


def test_a_batch_larger_than_the_limit_is_422(api_factory, redis_url, redis_client) -> None:
    api = api_factory(redis_url, api_rate_limit_per_minute=3)
    refused = post(api, {"requests": [BODY] * 4}, "/v1/tasks/batch")
    assert refused.status_code == 422
    assert "split it" in refused.json()["detail"]
    assert nothing_stored(redis_client)


def test_no_limit_by_default(api_factory, redis_url, redis_client) -> None:
    api = api_factory(redis_url)
    assert post(api, {"requests": [BODY] * 20}, "/v1/tasks/batch").status_code == 202
    assert [post(api, BODY).status_code for _ in range(5)] == [202] * 5
    assert not list(redis_client.scan_iter(match="genqueue:rate:*"))


def test_reads_are_not_rate_limited(api_factory, redis_url, same_window) -> None:
    api = api_factory(redis_url, api_rate_limit_per_minute=1)
    task_id = post(api, BODY).json()["task_id"]
    for _ in range(5):
        response = requests.get(f"{api.url}/v1/tasks/{task_id}", headers=AUTH, timeout=10)
        assert response.status_code == 200


# --------------------------------------------------------------------------- rate limit, unit


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_window_rolls_over_and_retry_after_counts_down(redis_url: str) -> None:
    async def scenario() -> list[Any]:
        client = aioredis.Redis.from_url(redis_url)
        clock = FakeClock(6_000_000.0)  # the start of a window (a multiple of 60)
        limiter = RateLimiter(client, 2, clock=clock)
        seen: list[Any] = []
        for at, cost in [(0, 1), (10, 1), (15.5, 1), (59.2, 1), (60, 2), (61, 1)]:
            clock.now = 6_000_000.0 + at
            try:
                await limiter.charge(Tenant(name="caller-a"), cost)
                seen.append("ok")
            except HTTPException as err:
                seen.append((err.status_code, (err.headers or {}).get("Retry-After")))
        await limiter.aclose()
        return seen

    assert asyncio.run(scenario()) == [
        "ok",
        "ok",
        (429, "45"),  # 44.5 s left, rounded up
        (429, "1"),
        "ok",  # a new window
        (429, "59"),
    ]


def test_concurrent_charges_never_pass_the_limit(redis_url: str) -> None:
    async def scenario() -> int:
        client = aioredis.Redis.from_url(redis_url)
        limiter = RateLimiter(client, 10, clock=FakeClock(6_000_030.0))

        async def one() -> bool:
            try:
                await limiter.charge(Tenant(name="caller-b"), 1)
            except HTTPException:
                return False
            return True

        passed = sum(await asyncio.gather(*(one() for _ in range(50))))
        await limiter.aclose()
        return passed

    assert asyncio.run(scenario()) == 10


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"prompt": "x" * 200_001}, "prompt"),
        ({"prompt": "hi", "system": "s" * 200_001}, "system"),
        ({"messages": [{"role": "user", "content": "c" * 200_001}]}, "content"),
        ({"messages": [{"role": "user", "content": "c"}] * 257}, "messages"),
        ({"prompt": "hi", "params": {"max_tokens": 32_769}}, "max_tokens"),
        ({"prompt": "hi", "params": {"max_tokens": 10**30}}, "max_tokens"),
        ({"prompt": "hi", "metadata": {f"k{i}": i for i in range(33)}}, "metadata"),
        ({"prompt": "hi", "metadata": {"blob": "b" * 5000}}, "metadata"),
        ({"prompt": "hi", "template": "x" * 65}, "template"),
        ({"prompt": "hi", "params": {"stop": {"nested": "object"}}}, "stop"),
    ],
    ids=[
        "prompt",
        "system",
        "message",
        "messages",
        "max_tokens",
        "max_tokens_huge",
        "metadata_keys",
        "metadata_size",
        "template_name",
        "params_object",
    ],
)
def test_oversized_input_is_422(api, redis_client, body: dict[str, Any], fragment: str) -> None:
    response = post(api, body)
    assert response.status_code == 422, response.text[:300]
    assert fragment in response.text
    assert len(response.content) < 20_000, "the error echoed the oversized input"
    assert nothing_stored(redis_client)


def test_batch_longer_than_the_maximum_is_422(api_factory, redis_url, redis_client) -> None:
    api = api_factory(redis_url, api_batch_max=3)
    response = post(api, {"requests": [BODY] * 4}, "/v1/tasks/batch")
    assert response.status_code == 422
    assert "at most 3" in response.json()["detail"]
    assert nothing_stored(redis_client)
    # An invalid request anywhere in a batch refuses all of it.
    bad = [BODY, {"prompt": "x" * 200_001}]
    assert post(api, {"requests": bad}, "/v1/tasks/batch").status_code == 422
    assert nothing_stored(redis_client)


def test_body_over_the_limit_is_413(api_factory, redis_url, redis_client) -> None:
    api = api_factory(redis_url, api_max_body_bytes=4096)
    response = post(api, {"prompt": "x" * 5000})
    assert response.status_code == 413
    assert "4096 bytes" in response.json()["detail"]

    assert nothing_stored(redis_client)
    # Just under the limit is fine.
    assert post(api, {"prompt": "x" * 3000}).status_code == 202


def test_chunked_body_over_the_limit_is_413(api_factory, redis_url, redis_client) -> None:
    api = api_factory(redis_url, api_max_body_bytes=4096)

    def chunks() -> Iterator[bytes]:  # no Content-Length to trust: counted as it arrives
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    chunked = requests.post(
        f"{api.url}/v1/tasks",
        data=chunks(),
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )
    assert nothing_stored(redis_client)
    assert chunked.status_code == 413
