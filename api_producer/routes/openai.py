"""The OpenAI-compatible front door: ``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /v1/models``.

Each call is a genqueue task (queued, capped, retried, counted): enqueued with the priority of
the ``X-Genqueue-Priority`` header, waited for, and answered in OpenAI's format, its ``id`` the
task id. With ``"stream": true`` the answer is OpenAI's server-sent chunks and ``data: [DONE]``,
read from the task's token stream. Every error is OpenAI's error shape with its status: 401,
400 for invalid input, 404 for an unknown model, 429 (``Retry-After``), 503, and 504 when the
wait ran out (the task carries on; its id is in the message). See
:mod:`api_producer.openai_format`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from api_producer.deps import CallerDep, KeyFirstRoute, StateDep
from api_producer.openai_format import (
    DONE,
    NO_RETRY,
    ChatBody,
    CompletionBody,
    Kind,
    OpenAIError,
    chunk,
    created_of,
    data,
    describe,
    error_body,
    failure,
    response,
    to_request,
    usage_chunk,
)
from api_producer.producers.direct import EnqueueError, describe_redis_error
from api_producer.quota import QuotaExceeded
from api_producer.rate_limit import Charge, RateLimitDep
from api_producer.routes.metrics import ApiMetrics, MetricsDep
from api_producer.routes.tasks import IdempotencyKey, check_request, enqueue, owned_requests
from api_producer.token_follow import Piece, TooManyStreams
from api_producer.waiters import TooManyWaiters
from worker.contract import PRIORITY_DEFAULT, PRIORITY_MAX, PRIORITY_MIN, TaskState, TaskStatus

#: What a client refused for too many waits or streams is told to wait, in seconds.
BUSY_RETRY_AFTER_S = 1
_KINDS = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          409: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 503: "service_unavailable"}  # fmt: skip


class OpenAIRoute(KeyFirstRoute):
    """A route whose every error, the key check's included, is answered in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def openai_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIError as err:
                return JSONResponse(err.body(), err.status, headers=err.headers)
            except HTTPException as err:
                kind = _KINDS.get(err.status_code, "api_error")
                status = 400 if err.status_code == 422 else err.status_code
                body = error_body(str(err.detail), kind, _code(err.status_code))
                return JSONResponse(body, status, headers=dict(err.headers or {}))
            except RequestValidationError as err:
                return JSONResponse(error_body(_invalid(err), "invalid_request_error"), 400)
            except QuotaExceeded as err:
                body = error_body(str(err), "rate_limit_error", err.error_type)
                return JSONResponse(body, 429, headers={"Retry-After": str(err.retry_after_s)})
            except (EnqueueError, redis.RedisError, OSError) as err:
                reason = str(err) if isinstance(err, EnqueueError) else describe_redis_error(err)
                body = error_body(f"service unavailable: {reason}", "service_unavailable")
                return JSONResponse(body, 503)

        return openai_errors


def _openai_error(description: str) -> dict[str, Any]:
    return {"description": f"{description} (OpenAI's error shape)"}


# Every status these routes may answer, so the OpenAPI document lists each one.
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _openai_error("invalid request"),
    401: _openai_error("missing or invalid API key"),
    404: _openai_error("no such model (a model is a configured endpoint)"),
    409: _openai_error("the Idempotency-Key was used with another body, or the task was cancelled"),
    413: _openai_error("the body is over the limit"),
    429: _openai_error("a rate limit or the day's token quota is spent; see Retry-After"),
    502: _openai_error("the task failed; its id and error are in the message"),
    503: _openai_error("Redis cannot be reached"),
    504: _openai_error("the wait ran out; the task carries on and its id is in the message"),
}

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


@router.get("/models")
async def list_models(state: StateDep, _caller: CallerDep) -> dict[str, Any]:
    """The configured endpoints, as OpenAI's model list."""
    names = sorted(state.endpoints) if state.endpoints is not None else ["default"]
    models = [{"id": name, "object": "model", "created": 0, "owned_by": "genqueue"}
              for name in names]  # fmt: skip
    return {"object": "list", "data": models}


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
    endpoint = _endpoint(state, body.model)
    tenant = state.keys.tenant(caller)
    [request] = owned_requests(
        state, tenant, [to_request(body, endpoint, _priority(call.priority))]
    )
    check_request(state, request)
    if body.stream:
        try:
            state.tokens.check()
        except TooManyStreams as err:
            raise _busy(str(err)) from None
    await charge(1)
    try:
        accepted = await enqueue(state, tenant, [request], call.idempotency_key)
    except BaseException as err:
        await asyncio.shield(charge.refund())  # refused: the call counts for nothing
        if isinstance(err, HTTPException) and err.status_code == 409:
            raise OpenAIError(409, str(err.detail), code="idempotency_conflict",
                              headers=NO_RETRY) from None  # fmt: skip
        raise
    if not accepted.replayed:
        counted.submitted.inc()
    task_id = accepted.task_ids[0]
    if body.stream:
        events = _stream(call.kind, state, task_id, body.model, body.include_usage)
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


def _endpoint(state: StateDep, model: str) -> str | None:
    if state.endpoints is None:
        return None  # the API knows of no endpoints file: the default endpoint serves
    if model not in state.endpoints:
        known = ", ".join(sorted(state.endpoints))
        raise OpenAIError(
            404, f"model {model!r} does not exist: a model is a configured endpoint ({known})",
            code="model_not_found",
        )  # fmt: skip
    return model


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
        raise _busy(f"{err}; the task {task_id} was enqueued and carries on") from None
    if status is None or not status.status.is_final:
        raise OpenAIError(
            504,
            f"task {task_id} did not finish within {wait_s:g}s (GENQUEUE_API_OPENAI_WAIT_S); "
            f"it carries on: GET /v1/tasks/{task_id}",
            "timeout", "timeout",
        )  # fmt: skip
    return status


def _busy(message: str) -> OpenAIError:
    return OpenAIError(
        429, message, "rate_limit_error", "busy", {"Retry-After": str(BUSY_RETRY_AFTER_S)}
    )


async def _stream(
    kind: Kind, state: StateDep, task_id: str, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    """OpenAI's chunks from the task's token stream, then ``[DONE]`` (or an error event)."""
    created = created_of(None)
    sent = False
    if kind == "chat":
        yield chunk(kind, task_id, model, created, "")
    async for event in _until_started(state, task_id):
        if event is None:
            yield b": keep-alive\n\n"
        elif isinstance(event, OpenAIError):
            yield data(event.body())
        elif isinstance(event, Piece):
            if event.kind == "token":
                sent = True
                yield chunk(kind, task_id, model, created, event.text)
            elif sent:  # an OpenAI stream cannot take back what it sent: end it, failed
                message = f"task {task_id}: the endpoint call broke mid-stream and is retried"
                yield data(error_body(message, "upstream_error", "restarted"))
                return
        elif event.status is TaskState.SUCCEEDED and event.result is not None:
            finish = event.result.finish_reason or "stop"
            yield chunk(kind, task_id, model, created, None if kind == "chat" else "", finish)
            if include_usage:
                yield usage_chunk(kind, event, model, created)
            yield DONE
        else:
            yield data(failure(event).body())


async def _until_started(state: StateDep, task_id: str) -> AsyncIterator[Any]:
    """The task's events; a task with no token and no end within GENQUEUE_API_OPENAI_WAIT_S
    ends the stream with an error naming it (it carries on, as a timed-out wait's does)."""
    wait_s = state.settings.api_openai_wait_s
    deadline = asyncio.get_running_loop().time() + wait_s
    events = state.tokens.follow(task_id, None)
    started = False
    try:
        while True:
            left_s = deadline - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(None if started else max(left_s, 0.0)):
                    event = await anext(events)
            except StopAsyncIteration:
                return
            except TimeoutError:
                message = (
                    f"task {task_id} did not start within {wait_s:g}s "
                    f"(GENQUEUE_API_OPENAI_WAIT_S); it carries on: GET /v1/tasks/{task_id}"
                )
                yield OpenAIError(504, message, "timeout", "timeout")
                return
            started = started or (event is not None)
            yield event
    finally:
        await events.aclose()


def _code(status: int) -> str | None:
    return {401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded"}.get(status)


def _invalid(err: RequestValidationError) -> str:
    parts = []
    for problem in err.errors():
        where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {problem.get('msg', 'invalid')}")
    return "; ".join(parts) or describe(err)
