"""One attempt at a generation task: validate, render, call the endpoint under the lease.

Knows nothing of Celery: :meth:`Generation.run` returns a result or a :class:`RetryLater`
and raises a :class:`~worker.errors.GenQueueError` for a final failure. The Celery task in
:mod:`worker.tasks` only maps those onto ``return``, ``self.retry`` and ``raise``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import ValidationError

from worker import keys, records
from worker.backoff import RetryPolicy, compute_delay_s
from worker.contract import GenerationRequest, GenerationResult
from worker.endpoint import CompletionClient
from worker.errors import (
    GenQueueError,
    InvalidRequest,
    RetriesExhausted,
    RetryableEndpointError,
    TaskCancelled,
)
from worker.lease import ConcurrencyLease
from worker.prompts import PromptRenderer

log = logging.getLogger("genqueue.task")


@dataclass(frozen=True)
class RetryLater:
    """The attempt failed with a retryable error; try again in ``delay_s``."""

    delay_s: float
    error: RetryableEndpointError
    attempt: int


@dataclass(frozen=True)
class _Progress:
    attempts: int
    first_attempt_at: float | None
    cancel_requested: bool
    stored_result: GenerationResult | None


class Generation:
    """Runs attempts of ``genqueue.generate``.

    :param redis_client: for task records (never the endpoint's secrets).
    :param renderer: prompt templates.
    :param client: the endpoint client.
    :param lease: the shared cap on in-flight endpoint calls.
    :param policy: attempts and backoff.
    :param deadline_s: no retry once this long has passed since the first attempt.
    :param record_ttl_s: how long task records are kept.
    """

    def __init__(
        self,
        *,
        redis_client: redis.Redis,
        renderer: PromptRenderer,
        client: CompletionClient,
        lease: ConcurrencyLease,
        policy: RetryPolicy,
        deadline_s: float,
        record_ttl_s: int,
    ) -> None:
        self._redis = redis_client
        self._renderer = renderer
        self._client = client
        self._lease = lease
        self._policy = policy
        self._deadline_s = deadline_s
        self._record_ttl_s = record_ttl_s

    def run(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A result dict, or :class:`RetryLater`; raises :class:`GenQueueError` when final."""
        try:
            outcome = self._attempt(task_id, args, kwargs)
        except GenQueueError as err:
            self._finish(task_id, err)
            log.info("task %s failed: %s: %s", task_id, err.error_type, err.message)
            raise
        if isinstance(outcome, RetryLater):
            log.info(
                "task %s attempt %d: %s; retrying in %.1fs",
                task_id,
                outcome.attempt,
                outcome.error.message,
                outcome.delay_s,
            )
            return outcome
        self._finish(task_id, None)
        return outcome.model_dump(mode="json")

    def _attempt(
        self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> GenerationResult | RetryLater:
        request = parse_payload(args, kwargs)
        progress = self._begin(task_id)
        if progress.stored_result is not None:
            log.info("task %s already has a result; not calling the endpoint again", task_id)
            return progress.stored_result
        if progress.cancel_requested:
            raise TaskCancelled("the task was cancelled before it ran")
        prompt = self._renderer.render(request)
        params = request.params.model_dump(mode="json", exclude_none=True)
        with self._lease.hold():
            attempt = self._count_attempt(task_id)
            try:
                return self._client.complete(prompt, params)
            except RetryableEndpointError as err:
                return self._retry_or_give_up(err, attempt, progress.first_attempt_at)

    def _retry_or_give_up(
        self, err: RetryableEndpointError, attempt: int, first_attempt_at: float | None
    ) -> RetryLater:
        delay_s = compute_delay_s(attempt, err.retry_after_s, self._policy)
        started = first_attempt_at if first_attempt_at is not None else time.time()
        if attempt >= self._policy.max_attempts:
            raise RetriesExhausted(f"gave up after {attempt} attempts: {err.message}") from err
        if time.time() + delay_s - started > self._deadline_s:
            raise RetriesExhausted(
                f"gave up after {attempt} attempts: the {self._deadline_s:g}s deadline "
                f"would pass before the next one: {err.message}"
            ) from err
        return RetryLater(delay_s=delay_s, error=err, attempt=attempt)

    def _begin(self, task_id: str) -> _Progress:
        key = keys.task_record(task_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hsetnx(key, records.F_CREATED, records.utcnow_iso())
        pipe.hmget(key, records.F_ATTEMPTS, records.F_FIRST_ATTEMPT, records.F_CANCEL)
        pipe.expire(key, self._record_ttl_s)
        pipe.get(keys.celery_result(task_id))
        _, (attempts, first, cancel), _, meta = pipe.execute()
        return _Progress(
            attempts=int(attempts or 0),
            first_attempt_at=float(first) if first else None,
            cancel_requested=bool(cancel),
            stored_result=_stored_result(meta),
        )

    def _count_attempt(self, task_id: str) -> int:
        key = keys.task_record(task_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hincrby(key, records.F_ATTEMPTS, 1)
        pipe.hsetnx(key, records.F_FIRST_ATTEMPT, repr(time.time()))
        attempt, _ = pipe.execute()
        return int(attempt)

    def _finish(self, task_id: str, error: GenQueueError | None) -> None:
        fields = {records.F_FINISHED: records.utcnow_iso()}
        if error is not None:
            fields[records.F_ERROR] = json.dumps(
                {"type": error.error_type, "message": error.message}
            )
        key = keys.task_record(task_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, self._record_ttl_s)
        pipe.execute()


def parse_payload(args: tuple[Any, ...], kwargs: dict[str, Any]) -> GenerationRequest:
    """The request from a Celery message: ``kwargs={"request": {...}}`` (or one positional)."""
    if not args and set(kwargs) == {"request"}:
        raw = kwargs["request"]
    elif len(args) == 1 and not kwargs:
        raw = args[0]
    else:
        raise InvalidRequest(
            "genqueue.generate takes one keyword argument 'request' (a JSON object); "
            f"got {len(args)} positional and keyword {sorted(kwargs)}"
        )
    if not isinstance(raw, dict):
        raise InvalidRequest(f"'request' must be a JSON object, not {type(raw).__name__}")
    try:
        return GenerationRequest.model_validate(raw)
    except ValidationError as err:
        raise InvalidRequest(f"invalid request: {describe_errors(err)}") from None


def describe_errors(err: ValidationError) -> str:
    """Pydantic errors as ``field: reason`` without echoing the (possibly large) input."""
    parts = []
    for problem in err.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in problem["loc"]) or "request"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)


def _stored_result(meta: bytes | None) -> GenerationResult | None:
    if not meta:
        return None
    try:
        stored = json.loads(meta)
    except ValueError:
        return None
    if stored.get("status") != "SUCCESS" or not isinstance(stored.get("result"), dict):
        return None
    return GenerationResult.model_validate(stored["result"])


def utc_timestamp() -> str:
    return datetime.now(UTC).isoformat()
