"""OpenAI's response, chunk and error formats, from genqueue's task statuses.

Pure translation: no Redis, no HTTP (the requests are :mod:`api_producer.openai_requests`).
An answer's ``model`` is the endpoint that served it (a fallback's, when one answered).
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from worker.contract import TaskStatus

#: Tells the ``openai`` SDK (and what is built on it) not to retry an answer: the task was
#: retried by genqueue already, or still runs, and a retried call would be another task.
NO_RETRY = {"x-should-retry": "false"}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.headers = headers or {}
        #: The request field the error is about (``temperature``, ``messages[0].content[1]``).
        self.param = param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.code, self.param)


def error_body(
    message: str, kind: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


Kind = Literal["completion", "chat"]


def served_by(status: TaskStatus, asked: str) -> str:
    """The ``model`` of an answer: the endpoint that served the task, else the one asked."""
    endpoint = status.result.endpoint if status.result is not None else None
    return endpoint or asked


def response(kind: Kind, status: TaskStatus, model: str) -> dict[str, Any]:
    """A whole OpenAI answer from a succeeded task (``id`` is the task id) asked of ``model``."""
    result = status.result
    assert result is not None
    choice: dict[str, Any] = {"index": 0, "finish_reason": result.finish_reason or "stop"}
    if kind == "chat":
        choice["message"] = {"role": "assistant", "content": result.text}
    else:
        choice.update(text=result.text, logprobs=None)
    return {
        "id": status.task_id,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": _created(status),
        "model": served_by(status, model),
        "choices": [choice],
        "usage": result.usage.model_dump(),
    }


def chunk(
    kind: Kind,
    task_id: str,
    model: str,
    created: int,
    text: str | None,
    finish_reason: str | None = None,
) -> bytes:
    """One ``data:`` event of an OpenAI stream."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
    if kind == "chat":
        choice["delta"] = {} if text is None else {"role": "assistant", "content": text}
    else:
        choice.update(text=text or "", logprobs=None)
    return data(
        {
            "id": task_id,
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
        }
    )


def usage_chunk(kind: Kind, status: TaskStatus, model: str, created: int) -> bytes:
    """The last chunk when ``stream_options.include_usage`` asks for it: no choices, usage."""
    assert status.result is not None
    return data(
        {
            "id": status.task_id,
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": created,
            "model": served_by(status, model),
            "choices": [],
            "usage": status.result.usage.model_dump(),
        }
    )


def data(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def failure(status: TaskStatus, headers: dict[str, str] | None = None) -> OpenAIError:
    """The error of a task that did not succeed, answered with ``headers``."""
    error = status.error
    kind = error.type if error is not None else str(status.status)
    message = f"task {status.task_id}: " + (error.message if error is not None else kind)
    if kind == "invalid_request":
        return OpenAIError(400, message, "invalid_request_error", kind, headers)
    if kind == "cancelled":
        return OpenAIError(409, message, "cancelled", kind, headers)
    return OpenAIError(502, message, "upstream_error", kind, headers)


def _created(status: TaskStatus) -> int:
    return int(status.created_at.timestamp()) if status.created_at else int(time.time())


def created_of(status: TaskStatus | None) -> int:
    return _created(status) if status is not None else int(time.time())


#: What a client refused for too many waits or streams is told to wait, in seconds.
BUSY_RETRY_AFTER_S = 1


def busy(message: str) -> OpenAIError:
    """The 429 of a process that holds too many waits or streams already."""
    return OpenAIError(
        429, message, "rate_limit_error", "busy", {"Retry-After": str(BUSY_RETRY_AFTER_S)}
    )
