"""Every answer of the OpenAI routes that is not a success, in OpenAI's error shape.

``{"error": {"message", "type", "param", "code"}}`` with the status OpenAI would give: the key
check's 401, 400 for invalid input (FastAPI's 422 included, ``param`` naming the field), 404,
409, 429 with ``Retry-After``, 503; and a path under ``/v1/`` that genqueue does not serve is a
404 in the same shape, naming the routes it does serve (:func:`unknown_path`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import redis
from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api_producer.deps import KeyFirstRoute
from api_producer.openai_format import OpenAIError, error_body
from api_producer.openai_requests import describe
from api_producer.producers.direct import EnqueueError, describe_redis_error
from api_producer.quota import QuotaExceeded

_KINDS = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          409: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 503: "service_unavailable"}  # fmt: skip
_CODES = {401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded"}
#: What a client that asked for a path genqueue does not serve is told it does serve.
SERVED = (
    "POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /v1/models/{model} "
    "(and genqueue's own /v1/tasks, /v1/batches, /v1/usage)"
)


def _openai_error(description: str) -> dict[str, Any]:
    return {"description": f"{description} (OpenAI's error shape)"}


# Every status these routes may answer, so the OpenAPI document lists each one.
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _openai_error("invalid request; param names the field"),
    401: _openai_error("missing or invalid API key"),
    404: _openai_error("no such model (a model is a configured endpoint the tenant may use)"),
    409: _openai_error("the Idempotency-Key was used with another body, or the task was cancelled"),
    413: _openai_error("the body is over the limit"),
    429: _openai_error("a rate limit or the day's token quota is spent; see Retry-After"),
    502: _openai_error("the task failed; its id and error are in the message"),
    503: _openai_error("Redis cannot be reached"),
    504: _openai_error("the wait ran out; the task carries on and its id is in the message"),
}


class OpenAIRoute(KeyFirstRoute):
    """A route whose every error, the key check's included, is answered in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def openai_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as err:
                return answer(err)

        return openai_errors


def answer(err: Exception) -> JSONResponse:
    """``err`` as OpenAI's error; an error of no kind known here is raised again."""
    if isinstance(err, OpenAIError):
        return JSONResponse(err.body(), err.status, headers=err.headers)
    if isinstance(err, HTTPException):
        kind = _KINDS.get(err.status_code, "api_error")
        status = 400 if err.status_code == 422 else err.status_code
        body = error_body(str(err.detail), kind, _CODES.get(err.status_code))
        return JSONResponse(body, status, headers=dict(err.headers or {}))
    if isinstance(err, RequestValidationError):
        message, param = describe(err.errors())
        return JSONResponse(error_body(message, "invalid_request_error", None, param), 400)
    if isinstance(err, QuotaExceeded):
        body = error_body(str(err), "rate_limit_error", err.error_type)
        return JSONResponse(body, 429, headers={"Retry-After": str(err.retry_after_s)})
    if isinstance(err, EnqueueError | redis.RedisError | OSError):
        reason = str(err) if isinstance(err, EnqueueError) else describe_redis_error(err)
        body = error_body(f"service unavailable: {reason}", "service_unavailable")
        return JSONResponse(body, 503)
    raise err


def unknown_path(fallback: ASGIApp) -> ASGIApp:
    """The app's answer for a path no route serves: OpenAI's 404 under ``/v1/``, naming the
    routes genqueue serves; ``fallback`` (Starlette's own 404) for any other path."""

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/v1" or path.startswith("/v1/")):
            await fallback(scope, receive, send)
            return
        method = scope.get("method", "GET")
        message = f"Invalid URL ({method} {path}): genqueue serves {SERVED}"
        body = error_body(message, "invalid_request_error", "unknown_url")
        await JSONResponse(body, 404)(scope, receive, send)

    return not_found
