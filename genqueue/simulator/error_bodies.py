"""The error bodies text-generation-webui (or the proxy in front of it) answers with."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from genqueue.simulator.protocol import Response, json_response, reason, text_response


def openai_error(message: str, type_: str, code: Any, *, param: bool = True) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": type_}
    if param:
        error["param"] = None
    error["code"] = code
    return {"error": error}


def validation_item(type_: str, loc: list[Any], msg: str, value: Any) -> dict[str, Any]:
    return {"type": type_, "loc": loc, "msg": msg, "input": value}


def unauthorized() -> Response:
    payload = openai_error(
        "Invalid API key", "invalid_request_error", "invalid_api_key", param=False
    )
    return json_response(401, payload)


def error_response(status: int, message: str | None, retry_after: str | None) -> Response:
    """The body text-generation-webui (or the proxy in front of it) sends for ``status``."""
    headers = (("Retry-After", retry_after),) if retry_after else ()
    if status == 500 and message is None:
        return replace(text_response(500, "Internal Server Error"), headers=headers)
    if status == 524:
        return replace(text_response(524, "error code: 524"), headers=headers)
    if status == 422:
        item = validation_item("missing", ["body", "prompt"], message or "Field required", None)
        return json_response(422, {"detail": [item]}, headers)
    if status == 429:
        body = openai_error(message or "Rate limit exceeded", "rate_limit_error", 429, param=False)
        return json_response(429, body, headers)
    if status == 400:
        body = openai_error(message or "Bad Request", "invalid_request_error", None)
        return json_response(400, body, headers)
    type_ = "server_error" if status >= 500 else "invalid_request_error"
    body = openai_error(message or reason(status), type_, status)
    return json_response(status, body, headers)
