"""Table tests for worker.pipeline.backoff: Retry-After parsing and the retry delay."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from worker.pipeline.backoff import RetryPolicy, compute_delay_s, parse_retry_after

NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)


def http_date(offset_s: float) -> str:
    return format_datetime(NOW + timedelta(seconds=offset_s), usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2", 2.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (" 3 ", 3.0),
        ("99999", 99999.0),  # parse does not cap; compute_delay_s does
        (http_date(30), 30.0),
        ("Mon, 01 Jan 2024 12:00:30 GMT", 30.0),
        (http_date(-30), 0.0),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
        ("garbage", None),
        ("-5", None),
        ("-0.5", None),
        ("nan", None),
        ("NaN", None),
        ("inf", None),
        ("-inf", None),
        ("Infinity", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_http_date_is_a_float_of_seconds() -> None:
    result = parse_retry_after(http_date(30), now=NOW)
    assert isinstance(result, float)
    assert result == 30.0


def test_parse_retry_after_http_date_without_now_uses_the_clock() -> None:
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    result = parse_retry_after(soon)
    assert result is not None
    assert 55.0 <= result <= 60.0


POLICY = RetryPolicy()  # base 1, max 30, retry-after cap 120


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (2.0, 2.0),
        (0.0, 0.0),
        (0.25, 0.25),
        (120.0, 120.0),
        (99999.0, POLICY.retry_after_max_s),
        (parse_retry_after("99999"), POLICY.retry_after_max_s),
    ],
)
def test_retry_after_wins_and_is_capped(retry_after: float, expected: float) -> None:
    for attempt in (1, 3, 10):
        assert compute_delay_s(attempt, retry_after, POLICY, random.Random(0)) == expected


def test_retry_after_cap_comes_from_the_policy() -> None:
    policy = RetryPolicy(retry_after_max_s=5.0)
    assert compute_delay_s(1, 99999.0, policy) == 5.0
    assert compute_delay_s(1, 4.0, policy) == 4.0


def ceiling(attempt: int, policy: RetryPolicy = POLICY) -> float:
    return min(policy.max_delay_s, policy.base_delay_s * 2 ** (attempt - 1))


@pytest.mark.parametrize(
    ("attempt", "expected_ceiling"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 30.0), (7, 30.0), (10, 30.0)],
)
def test_ceiling_table(attempt: int, expected_ceiling: float) -> None:
    assert ceiling(attempt) == expected_ceiling


@pytest.mark.parametrize("attempt", range(1, 11))
def test_backoff_full_jitter_bounds(attempt: int) -> None:
    rng = random.Random(1234 + attempt)
    top = ceiling(attempt)
    samples = [compute_delay_s(attempt, None, POLICY, rng) for _ in range(2000)]
    assert all(0.0 <= s <= top for s in samples)
    # Full jitter: the upper bound is approached, and the spread is not collapsed.
    assert max(samples) >= 0.98 * top
    assert min(samples) <= 0.02 * top
    assert 0.4 * top <= sum(samples) / len(samples) <= 0.6 * top


@pytest.mark.parametrize("attempt", range(1, 11))
def test_backoff_is_uniform_over_the_ceiling(attempt: int) -> None:
    delay = compute_delay_s(attempt, None, POLICY, random.Random(42))
    assert delay == random.Random(42).uniform(0, ceiling(attempt))


@pytest.mark.parametrize(
    ("policy", "attempt", "top"),
    [
        (RetryPolicy(base_delay_s=0.5, max_delay_s=10.0), 1, 0.5),
        (RetryPolicy(base_delay_s=0.5, max_delay_s=10.0), 3, 2.0),
        (RetryPolicy(base_delay_s=0.5, max_delay_s=10.0), 6, 10.0),
        (RetryPolicy(base_delay_s=2.0, max_delay_s=600.0), 9, 512.0),
        (RetryPolicy(base_delay_s=1e300, max_delay_s=30.0), 500, 30.0),
    ],
)
def test_backoff_uses_the_policy(policy: RetryPolicy, attempt: int, top: float) -> None:
    rng = random.Random(7)
    samples = [compute_delay_s(attempt, None, policy, rng) for _ in range(1000)]
    assert all(0.0 <= s <= top for s in samples)
    assert max(samples) >= 0.95 * top


@pytest.mark.parametrize("attempt", [0, -3, 63, 64, 1_000, 10_000, 10**18])
def test_extreme_attempt_numbers_do_not_overflow(attempt: int) -> None:
    rng = random.Random(3)
    top = POLICY.base_delay_s if attempt < 1 else POLICY.max_delay_s
    samples = [compute_delay_s(attempt, None, POLICY, rng) for _ in range(500)]
    assert all(math.isfinite(s) and 0.0 <= s <= top for s in samples)
    assert max(samples) >= 0.9 * top


@pytest.mark.parametrize("retry_after", [math.nan, math.inf, -math.inf, -1.0, -0.001], ids=repr)
@pytest.mark.parametrize("attempt", [1, 4, 10])
def test_invalid_retry_after_falls_back_to_backoff(retry_after: float, attempt: int) -> None:
    delay = compute_delay_s(attempt, retry_after, POLICY, random.Random(99))
    assert delay == random.Random(99).uniform(0, ceiling(attempt))
    assert 0.0 <= delay <= ceiling(attempt)


def test_without_rng_uses_module_random() -> None:
    state = random.getstate()
    try:
        random.seed(5)
        first = compute_delay_s(4, None, POLICY)
        random.seed(5)
        expected = random.uniform(0, 8.0)
    finally:
        random.setstate(state)
    assert first == expected
