"""The retry delay, as pure functions of the attempt number and the server's Retry-After."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from worker.settings import Settings, default_of


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait between attempts: the settings' ``retry_*`` fields."""

    max_attempts: int = default_of("retry_max_attempts")
    base_delay_s: float = default_of("retry_base_delay_s")
    max_delay_s: float = default_of("retry_max_delay_s")
    retry_after_max_s: float = default_of("retry_after_max_s")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.retry_max_attempts,
            base_delay_s=settings.retry_base_delay_s,
            max_delay_s=settings.retry_max_delay_s,
            retry_after_max_s=settings.retry_after_max_s,
        )


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    Returns ``None`` for a missing, unparseable, negative, NaN or infinite value, so the
    caller falls back to its own backoff.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds: float | None = float(value)
    except ValueError:
        seconds = _seconds_until_http_date(value, now)
    if seconds is None:
        return None
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        return None
    return seconds


def _seconds_until_http_date(value: str, now: datetime | None) -> float | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def compute_delay_s(
    attempt: int,
    retry_after_s: float | None,
    policy: RetryPolicy,
    rng: random.Random | None = None,
) -> float:
    """The wait before attempt ``attempt + 1``, after ``attempt`` failed (1-based).

    A valid server-directed delay wins, capped at ``retry_after_max_s``. Otherwise:
    exponential backoff with full jitter, ``uniform(0, min(max_delay, base * 2**(attempt-1)))``.
    """
    if retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s >= 0:
        return min(retry_after_s, policy.retry_after_max_s)
    exponent = min(max(attempt - 1, 0), 62)
    ceiling = min(policy.max_delay_s, policy.base_delay_s * (2**exponent))
    return (rng or random).uniform(0, ceiling)
