"""The retry decision: after a failed attempt, try again (when, and where) or give up.

One place answers it for every task: :func:`retry_or_give_up` for a retryable endpoint failure
(the delay from :mod:`worker.pipeline.backoff`, within the attempts and the task's deadline),
:func:`later` for a task held back without a call (breaker open, rate limit, a serverless job
still running), :func:`next_endpoint` and :func:`fall_back_to` for the move to a fallback
endpoint. Which failures are retryable at all is the endpoint client's one classifier
(:mod:`worker.endpoints.completions`), and a failure that follows one request is judged by
:mod:`worker.pipeline.request_faults`. Nothing here touches Redis or Celery.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from worker.contract import GenerationRequest
from worker.errors import DeadlineExpired, GenQueueError, RetriesExhausted, RetryableEndpointError
from worker.keys import queue_for
from worker.pipeline.backoff import RetryPolicy, compute_delay_s


@dataclass(frozen=True)
class RetryLater:
    """The attempt could not finish; try again in ``delay_s``."""

    delay_s: float
    error: RetryableEndpointError
    attempt: int
    #: How long the failed endpoint call took (``None``: no call was made).
    latency_ms: int | None = None
    #: The queue to go back to, when the task moves to a fallback endpoint.
    queue: str | None = None


@dataclass(frozen=True)
class RetryLimits:
    """How far retries go: the backoff and attempts, and the task's deadline from its first."""

    retry: RetryPolicy
    deadline_s: float


def later(
    request: GenerationRequest, err: RetryableEndpointError, attempt: int, delay_s: float
) -> RetryLater:
    """Try again in ``delay_s``, unless the request's deadline passes first."""
    deadline = request.deadline
    if deadline is not None and time.time() + delay_s >= deadline.timestamp():
        raise DeadlineExpired(
            f"the deadline {deadline.isoformat()} passes before the next attempt could run: "
            f"{err.message}"
        ) from err
    return RetryLater(delay_s=delay_s, error=err, attempt=attempt)


def retry_or_give_up(
    request: GenerationRequest,
    err: RetryableEndpointError,
    attempt: int,
    first_attempt_at: float | None,
    limits: RetryLimits,
) -> RetryLater:
    """After a retryable failure of call ``attempt``: the next attempt, or
    :class:`RetriesExhausted` when the attempts or the task's deadline are spent."""
    policy = limits.retry
    delay_s = compute_delay_s(attempt, err.retry_after_s, policy)
    started = first_attempt_at if first_attempt_at is not None else time.time()
    if attempt >= policy.max_attempts:
        raise RetriesExhausted(f"gave up after {attempt} attempts: {err.message}") from err
    if time.time() + delay_s - started > limits.deadline_s:
        raise RetriesExhausted(
            f"gave up after {attempt} attempts: the {limits.deadline_s:g}s deadline "
            f"would pass before the next one: {err.message}"
        ) from err
    return later(request, err, attempt, delay_s)


def time_left(request: GenerationRequest) -> float | None:
    """Seconds until the request's deadline (``None`` without one); expired if none are left."""
    if request.deadline is None:
        return None
    left_s = (request.deadline - datetime.now(UTC)).total_seconds()
    if left_s <= 0:
        raise DeadlineExpired(f"the deadline {request.deadline.isoformat()} passed")
    return left_s


def next_endpoint(chain: Sequence[str], tried: Sequence[str]) -> str | None:
    """The first endpoint of a task's chain (its endpoint, then the fallbacks) not yet tried."""
    return next((name for name in chain if name not in tried), None)


def fall_back_to(following: str, name: str, err: GenQueueError, attempt: int) -> RetryLater:
    """Go on at once on endpoint ``following``'s queue, ``name`` having given up."""
    error = RetryableEndpointError(f"endpoint {name} gave up ({err}); trying {following}")
    return RetryLater(delay_s=0.0, error=error, attempt=attempt, queue=queue_for(following))


def poll_delay_s(polls: int) -> float:
    """Polls of a serverless job: 0.5 s, then doubling, at most every 10 s."""
    return float(min(10.0, 0.5 * 2 ** min(polls, 10)))


def after(error: RetryableEndpointError) -> float:
    """When a task held back without a call (breaker, rate limit) is tried again."""
    return (error.retry_after_s or 0.0) + 0.1
