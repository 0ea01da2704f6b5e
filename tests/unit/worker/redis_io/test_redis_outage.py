"""The outage policy: a capped doubling backoff, and a round trip retried until the budget."""

from __future__ import annotations

import pytest
import redis

from worker.redis_io.redis_outage import OutagePolicy, RedisOutage, outage_delay_s, ride_out

POLICY = OutagePolicy(budget_s=5.0, first_delay_s=0.5, max_delay_s=2.0)


def test_the_delay_doubles_up_to_its_cap() -> None:
    assert [outage_delay_s(n, POLICY) for n in range(1, 6)] == [0.5, 1.0, 2.0, 2.0, 2.0]


def test_a_round_trip_is_asked_again_until_redis_answers() -> None:
    now = [0.0]
    answers: list[object] = [redis.ConnectionError("down"), redis.TimeoutError("slow"), "ok"]

    def call() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sleep(seconds: float) -> None:
        now[0] += seconds

    assert ride_out(call, "its end", POLICY, clock=lambda: now[0], sleep=sleep) == "ok"
    assert now[0] == 1.5


def test_the_budget_spent_raises_a_clear_error() -> None:
    now = [0.0]
    slept: list[float] = []

    def call() -> None:
        raise redis.ConnectionError("down")

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    with pytest.raises(RedisOutage, match="unreachable for more than 5s; gave up its end"):
        ride_out(call, "its end", POLICY, clock=lambda: now[0], sleep=sleep)
    assert sum(slept) == 5.0
    assert slept == [0.5, 1.0, 2.0, 1.5]


def test_other_errors_are_not_retried() -> None:
    def call() -> None:
        raise redis.ResponseError("WRONGTYPE")

    with pytest.raises(redis.ResponseError):
        ride_out(call, "its end", POLICY, sleep=lambda _: None)
