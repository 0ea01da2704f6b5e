"""The OpenAI-compatible front door: ``POST /v1/completions``, ``POST /v1/chat/completions``
(the models are :mod:`api_producer.routes.openai_models`).

Each call is a genqueue task (queued, capped, retried, counted): enqueued with the priority of
the ``X-Genqueue-Priority`` header, waited for, and answered in OpenAI's format, its ``id`` the
task id. With ``"stream": true`` the answer is OpenAI's server-sent chunks and ``data: [DONE]``
(:mod:`api_producer.openai_stream`). Every error is OpenAI's error shape
(:mod:`api_producer.openai_errors`), and 504 when the wait ran out (the task carries on; its id
is in the message).

One call is never more than one task: an ``Idempotency-Key`` lands a retried call on the same
task (as on ``/v1/tasks``), and every answer given once the task was enqueued, without a key,
tells the ``openai`` SDK not to retry it (``x-should-retry: false``, which its
``_should_retry`` obeys before it looks at the status).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Header, HTTPException, Response
from fastapi.responses import JSONResponse, StreamingResponse

from api_producer.deps import CallerDep, StateDep
from api_producer.openai_errors import OPENAI_ERRORS, OpenAIRoute
from api_producer.openai_format import (
    NO_RETRY,
    Kind,
    OpenAIError,
    busy,
    failure,
    response,
)
from api_producer.openai_requests import ChatBody, CompletionBody, to_request
from api_producer.openai_stream import stream
from api_producer.producers.direct import describe_redis_error
from api_producer.rate_limit import Charge, RateLimitDep
from api_producer.routes.metrics import ApiMetrics, MetricsDep
from api_producer.routes.openai_models import model_endpoint
from api_producer.routes.tasks import IdempotencyKey, check_request, enqueue, owned_requests
from api_producer.token_follow import TooManyStreams
from api_producer.waiters import TooManyWaiters
from worker.contract import PRIORITY_DEFAULT, PRIORITY_MAX, PRIORITY_MIN, TaskState, TaskStatus

#: A call's answer: OpenAI's JSON, or with ``"stream": true`` its server-sent events.
ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "OpenAI's response, or its chunks as server-sent events when streaming",
        "content": {"application/json": {}, "text/event-stream": {}},
    }
}

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute, responses=OPENAI_ERRORS)

PriorityHeader = Annotated[
    str | None, Header(alias="X-Genqueue-Priority", description="the task's priority, 0-9")
]


@router.post("/completions", responses=ANSWERS)
async def completions(
    body: CompletionBody,
    state: StateDep,
    caller: CallerDep,
    charge: RateLimitDep,
    counted: MetricsDep,
    priority: PriorityHeader = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """OpenAI's completions: a task with the prompt as it is."""
    call = _Call("completion", priority, idempotency_key)
    return await _serve(call, body, state, caller, charge, counted)


@router.post("/chat/completions", responses=ANSWERS)
async def chat_completions(
    body: ChatBody,
    state: StateDep,
    caller: CallerDep,
    charge: RateLimitDep,
    counted: MetricsDep,
    priority: PriorityHeader = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """OpenAI's chat completions: a task whose messages go to the endpoint's chat route."""
    call = _Call("chat", priority, idempotency_key)
    return await _serve(call, body, state, caller, charge, counted)


@dataclass(frozen=True)
class _Call:
    """What a call says besides its body: its route's kind and its two headers."""

    kind: Kind
    priority: str | None
    idempotency_key: str | None


async def _serve(
    call: _Call,
    body: CompletionBody | ChatBody,
    state: StateDep,
    caller: str,
    charge: Charge,
    counted: ApiMetrics,
) -> Response:
    endpoint = model_endpoint(state, caller, body.model)
    tenant = state.keys.tenant(caller)
    [request] = owned_requests(
        state, tenant, [to_request(body, endpoint, _priority(call.priority))]
    )
    check_request(state, request)
    slot = None
    if body.streamed:
        try:
            slot = state.tokens.reserve()  # counted now: a burst cannot all pass
        except TooManyStreams as err:
            raise busy(str(err)) from None
    try:
        await charge(1)
        accepted = await enqueue(state, tenant, [request], call.idempotency_key)
    except BaseException as err:
        if slot is not None:
            slot.release()
        await asyncio.shield(charge.refund())  # refused: the call counts for nothing
        if isinstance(err, HTTPException) and err.status_code == 409:
            raise OpenAIError(409, str(err.detail), code="idempotency_conflict",
                              headers=NO_RETRY) from None  # fmt: skip
        raise
    if not accepted.replayed:
        counted.submitted.inc()
    task_id = accepted.task_ids[0]
    if slot is not None:
        events = stream(call.kind, state, task_id, body.model, body.include_usage, slot)
        return StreamingResponse(events, media_type="text/event-stream")
    try:
        status = await _wait(state, task_id)
    except (OpenAIError, redis.RedisError, OSError) as err:
        raise _still_runs(err, task_id, call.idempotency_key is not None) from None
    if status.status is not TaskState.SUCCEEDED:
        raise failure(status, NO_RETRY)  # genqueue retried it already
    return JSONResponse(response(call.kind, status, body.model))


def _still_runs(err: Exception, task_id: str, keyed: bool) -> OpenAIError:
    """The answer to a call whose task was enqueued and may still run.

    Without an ``Idempotency-Key`` a retried call would be a second task: the SDK is told not
    to retry (``x-should-retry: false``). With one, its retry lands on this task and waits again.
    """
    if not isinstance(err, OpenAIError):
        reason = describe_redis_error(err)
        message = (
            f"service unavailable: {reason}; the task {task_id} was enqueued and carries on: "
            f"GET /v1/tasks/{task_id}"
        )
        err = OpenAIError(503, message, "service_unavailable")
    if not keyed:
        err.headers = {**err.headers, **NO_RETRY}
    return err


def _priority(header: str | None) -> int:
    if header is None:
        return PRIORITY_DEFAULT
    if not header.strip().isdigit() or not PRIORITY_MIN <= int(header) <= PRIORITY_MAX:
        raise OpenAIError(400, f"X-Genqueue-Priority: {PRIORITY_MIN} to {PRIORITY_MAX}")
    return int(header)


async def _wait(state: StateDep, task_id: str) -> TaskStatus:
    wait_s = state.settings.api_openai_wait_s
    try:
        status = await state.store.wait(task_id, wait_s)
    except TooManyWaiters as err:
        raise busy(f"{err}; the task {task_id} was enqueued and carries on") from None
    if status is None or not status.status.is_final:
        raise OpenAIError(
            504,
            f"task {task_id} did not finish within {wait_s:g}s (GENQUEUE_API_OPENAI_WAIT_S); "
            f"it carries on: GET /v1/tasks/{task_id}",
            "timeout", "timeout",
        )  # fmt: skip
    return status
