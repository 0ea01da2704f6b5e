"""A submission's Redis steps, written once for the sync and the asyncio producer.

A submission is a generator of :class:`Step` s: Redis commands, run alone (the reply is sent
back in) or as one transaction. The producers only run them, :class:`DirectProducer` on a
blocking client and :class:`AsyncProducer` on the event loop (:func:`run` and :func:`arun`);
what is sent, in which order, and what a Redis failure leaves behind are decided here alone.
A Redis failure is thrown back into the generator at the step that met it, which answers with
:class:`EnqueueError` after undoing what it must.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.sentinel import MasterNotFoundError

from api_producer.producers.enqueue import (
    Accepted,
    Command,
    EnqueueError,
    EnqueuePlan,
    IdempotencyInUse,
    Reservation,
    claim_key,
    claim_value,
    earlier_answer,
    request_digest,
)
from worker import keys
from worker.contract import GenerationRequest
from worker.delivery import records

#: What a Redis failure is to a producer: redis-py's errors and the socket's own.
REDIS_ERRORS = (redis.RedisError, OSError)
#: How long a pending idempotency claim lives if its request dies before its transaction: far
#: longer than a claim takes to its transaction (the API's Redis waits are seconds).
CLAIM_PENDING_TTL_S = 60
#: How long a request waits for the first request with its key to store its tasks.
KEY_IN_USE_WAIT_S = 10.0
KEY_IN_USE_POLL_S = 0.02


@dataclass(frozen=True)
class Step:
    """Redis commands to run: one alone (its reply is sent back), or several in one MULTI/EXEC."""

    commands: list[Command]
    transaction: bool = False
    #: No command: wait this long, then go on (the reply is ``None``).
    pause_s: float = 0.0
    #: Run on the Redis of Celery's results (``GENQUEUE_RESULT_REDIS_URL``; the one Redis
    #: when that is unset).
    results: bool = False


T = TypeVar("T")
#: A submission: its steps, then its answer.
Steps = Generator[Step, Any, T]


def submit(
    plan: EnqueuePlan,
    requests: Sequence[GenerationRequest],
    idempotency_key: str | None,
    idempotency_ttl_s: int,
    reservation: Reservation | None = None,
) -> Steps[Accepted]:
    """Enqueue all of ``requests`` or none of them.

    With ``idempotency_key``, the same key and body return the ids of the first call and
    enqueue nothing; the same key with another body raises :class:`IdempotencyConflict`.
    """
    payloads = [request.to_payload() for request in requests]
    task_ids = [str(uuid.uuid4()) for _ in requests]
    claim: str | None = None
    stored: list[Command] = []
    if idempotency_key is not None:
        digest = request_digest(payloads)
        claim = claim_key(idempotency_key)
        try:
            earlier = yield from _claim(claim, digest, task_ids)
        except REDIS_ERRORS as err:
            raise _failed("store", err) from err
        if earlier is not None:
            return earlier
        # The tasks and the claim's answer in one transaction: the answer is never seen
        # without the tasks.
        stored = [("SET", claim, claim_value(digest, task_ids), "EX", idempotency_ttl_s)]
    try:
        commands = plan.accept(task_ids, requests, payloads, reservation)
        yield Step(commands + stored, transaction=True)
    except REDIS_ERRORS as err:
        if claim is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                yield Step([("DEL", claim)])
        raise _failed("store", err) from err
    plan.sent(requests)
    return Accepted(task_ids=task_ids)


def requeue(
    plan: EnqueuePlan, task_id: str, request: GenerationRequest, result_ttl_s: int
) -> Steps[None]:
    """Send a finished task again under the same id, its outcome, deliveries and attempts
    cleared first so it starts afresh."""
    key = keys.task_record(task_id)
    try:
        fields = yield Step([("HKEYS", key)])
        stale = [field for field in map(_text, fields) if field.startswith(records.F_DELIVERIES)]
        # The old outcome first: the new run's states are written after the message is sent.
        yield Step([("DEL", keys.celery_result(task_id))], results=True)
        yield Step(
            [
                ("HDEL", key, *_CLEARED_ON_REQUEUE, *stale),
                ("HSET", key, records.F_ATTEMPTS, "0"),
                ("HSETNX", key, records.F_CREATED, records.utcnow_iso()),
                ("EXPIRE", key, result_ttl_s),
                *plan.send(task_id, request, request.to_payload()),
            ],
            transaction=True,
        )
    except REDIS_ERRORS as err:
        raise _failed("send", err) from err
    plan.sent([request])


#: A requeued task starts afresh: its outcome goes, and its usage is counted again at its end.
_CLEARED_ON_REQUEUE = (
    records.F_ERROR,
    records.F_FINISHED,
    records.F_FIRST_ATTEMPT,
    records.F_COUNTED,
)


def _claim(
    redis_key: str, digest: str, task_ids: list[str]
) -> Generator[Step, Any, Accepted | None]:
    """Claim the idempotency key (``None``), or the earlier call's answer once its tasks are
    stored.

    A claim is pending until the first call's transaction ran; a second call waits for its
    outcome: the stored answer, or the claim withdrawn (the first failed: the second claims it
    in turn). Past :data:`KEY_IN_USE_WAIT_S`, :class:`IdempotencyInUse`.
    """
    pending = claim_value(digest, task_ids, pending=True)
    deadline = time.monotonic() + KEY_IN_USE_WAIT_S
    while not (yield Step([("SET", redis_key, pending, "NX", "EX", CLAIM_PENDING_TTL_S)])):
        existing = yield Step([("GET", redis_key)])
        if existing is None:
            continue  # withdrawn or expired between the two commands: claim it again
        earlier = earlier_answer(existing, digest)
        if earlier is not None:
            return earlier
        if time.monotonic() >= deadline:
            raise IdempotencyInUse(
                "a request with this Idempotency-Key is still being enqueued; retry"
            )
        yield Step([], pause_s=KEY_IN_USE_POLL_S)
    return None


def _failed(what: str, err: BaseException) -> EnqueueError:
    return EnqueueError(f"could not {what} the task: {describe_redis_error(err)}")


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def run(steps: Steps[T], execute: Callable[[Step], Any]) -> T:
    """Run ``steps`` with a blocking ``execute``."""
    outcome: Step | T = _advance(steps, None, None)
    while isinstance(outcome, Step):
        if not outcome.commands:
            time.sleep(outcome.pause_s)
            outcome = _advance(steps, None, None)
            continue
        try:
            reply = execute(outcome)
        except REDIS_ERRORS as err:
            outcome = _advance(steps, None, err)
        else:
            outcome = _advance(steps, reply, None)
    return outcome


async def arun(steps: Steps[T], execute: Callable[[Step], Awaitable[Any]]) -> T:
    """Run ``steps`` with an asyncio ``execute``."""
    outcome: Step | T = _advance(steps, None, None)
    while isinstance(outcome, Step):
        if not outcome.commands:
            await asyncio.sleep(outcome.pause_s)
            outcome = _advance(steps, None, None)
            continue
        try:
            reply = await execute(outcome)
        except REDIS_ERRORS as err:
            outcome = _advance(steps, None, err)
        else:
            outcome = _advance(steps, reply, None)
    return outcome


def _advance(steps: Steps[T], reply: Any, error: BaseException | None) -> Step | T:
    """The next step, or the submission's answer once there is none."""
    try:
        return steps.throw(error) if error is not None else steps.send(reply)
    except StopIteration as done:
        answer: T = done.value
        return answer


def describe_redis_error(err: BaseException) -> str:
    """A short reason that never includes the Redis URL (it may hold a password)."""
    text = str(err)
    if isinstance(err, redis.exceptions.OutOfMemoryError) or "maxmemory" in text:
        return "Redis is out of memory (maxmemory reached)"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        # ssl's reason ("unable to get local issuer certificate", a host name mismatch) only.
        reason = text.split("certificate verify failed:", 1)[-1].split("(_ssl", 1)[0].strip()
        return (
            f"Redis's TLS certificate was refused ({reason or 'verify failed'}): is it signed "
            "by the CA of GENQUEUE_REDIS_CA_FILE, for the host of REDIS_URL?"
        )
    if isinstance(err, MasterNotFoundError):
        return (
            "no sentinel names a reachable primary (is GENQUEUE_REDIS_SENTINEL_MASTER its name, "
            "GENQUEUE_REDIS_SENTINEL_PASSWORD the sentinels' password?)"
        )
    if isinstance(err, redis.ConnectionError | ConnectionError | OSError | TimeoutError):
        return "Redis is unreachable"
    return type(err).__name__
