"""api_producer/scripts/rate_charge.lua and rate_refund.lua on their own, against a real Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis
from redis.commands.core import Script

from worker import lua

KEY = "genqueue:rate:caller:100"


@pytest.fixture
def charge(redis_client: redis.Redis) -> Script:
    return lua.register(redis_client, "api_producer", "rate_charge")


@pytest.fixture
def refund(redis_client: redis.Redis) -> Script:
    return lua.register(redis_client, "api_producer", "rate_refund")


def test_charges_count_up_to_the_limit_and_set_the_ttl(
    charge: Script, redis_client: redis.Redis
) -> None:
    assert charge(keys=[KEY], args=[3, 5, 120]) == 3
    assert charge(keys=[KEY], args=[2, 5, 120]) == 5
    assert redis_client.get(KEY) == b"5"
    assert 110 < redis_client.ttl(KEY) <= 120


def test_a_charge_past_the_limit_counts_for_nothing(
    charge: Script, redis_client: redis.Redis
) -> None:
    assert charge(keys=[KEY], args=[4, 5, 120]) == 4
    assert charge(keys=[KEY], args=[2, 5, 120]) == -1
    assert redis_client.get(KEY) == b"4"
    assert charge(keys=["genqueue:rate:other:100"], args=[6, 5, 120]) == -1
    assert redis_client.exists("genqueue:rate:other:100") == 0


def test_a_refund_gives_back_what_was_charged(
    charge: Script, refund: Script, redis_client: redis.Redis
) -> None:
    charge(keys=[KEY], args=[4, 10, 120])
    assert refund(keys=[KEY], args=[3]) == 3
    assert redis_client.get(KEY) == b"1"


def test_a_refund_never_goes_below_zero(refund: Script, redis_client: redis.Redis) -> None:
    redis_client.set(KEY, 2)
    assert refund(keys=[KEY], args=[5]) == 2
    assert redis_client.get(KEY) == b"0"
    # The window ended and its counter lapsed: nothing to give back, nothing written.
    assert refund(keys=["genqueue:rate:caller:99"], args=[5]) == 0
    assert redis_client.exists("genqueue:rate:caller:99") == 0


def test_the_api_runs_them_on_an_asyncio_client(redis_url: str) -> None:
    async def charge_twice() -> list[int]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            script = lua.register(client, "api_producer", "rate_charge")
            return [await script(keys=[KEY], args=[1, 5, 120]) for _ in range(2)]
        finally:
            await client.aclose()

    assert asyncio.run(charge_twice()) == [1, 2]
