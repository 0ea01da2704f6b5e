"""OpenAI's request, response, chunk and error formats, translated to and from genqueue's.

Pure translation: no Redis, no HTTP. ``model`` names a configured endpoint; the rest of a
request's sampling fields become the task's ``params`` (the server's own extra fields pass
through as they do in ``POST /v1/tasks``). A completion's ``prompt`` is sent as it is (template
``raw``); chat ``messages`` go to the endpoint's chat route (``chat``), whose server applies its
own chat template, as an OpenAI client expects.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from worker.contract import GenerationRequest, Message, TaskStatus

#: OpenAI fields genqueue takes but does not send on (it answers them itself, or they have no
#: meaning for a queued task).
NOT_FORWARDED = frozenset({"model", "stream", "stream_options", "n", "user", "echo", "suffix"})
#: Tells the ``openai`` SDK (and what is built on it) not to retry an answer: the task was
#: retried by genqueue already, or still runs, and a retried call would be another task.
NO_RETRY = {"x-should-retry": "false"}
#: OpenAI's ``developer`` role is a system message to the servers genqueue calls.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.code)


def error_body(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class _Sampling(BaseModel):
    """What both routes share; unknown fields are the server's extra sampler fields."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=64)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = 1

    @model_validator(mode="after")
    def _one_choice(self) -> _Sampling:
        if self.n != 1:
            raise ValueError("n: genqueue generates one choice per request")
        return self

    def params(self) -> dict[str, Any]:
        fields = {**self.model_dump(exclude_none=True), **(self.model_extra or {})}
        return {k: v for k, v in fields.items() if k not in NOT_FORWARDED and v is not None}

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionBody(_Sampling):
    prompt: str | list[str]
    echo: bool = False

    @model_validator(mode="after")
    def _supported(self) -> CompletionBody:
        if self.echo:
            raise ValueError("echo: genqueue does not echo the prompt")
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("prompt: genqueue takes one prompt per request")
        return self

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def as_message(self) -> Message:
        role = ROLES.get(self.role)
        if role is None:
            raise ValueError(f"messages: role {self.role!r} is not supported by genqueue")
        content = self.content
        if isinstance(content, list):
            content = "".join(
                str(part.get("text", "")) for part in content if part.get("type") == "text"
            )
        return Message.model_validate({"role": role, "content": content or ""})


class ChatBody(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None

    def params(self) -> dict[str, Any]:
        params = super().params()
        params.pop("messages", None)
        newer = params.pop("max_completion_tokens", None)
        if newer is not None:
            params.setdefault("max_tokens", newer)
        return params


def to_request(
    body: CompletionBody | ChatBody, endpoint: str | None, priority: int
) -> GenerationRequest:
    """The genqueue task of an OpenAI request; :class:`OpenAIError` 400 if it cannot be one."""
    fields: dict[str, Any] = {
        "params": body.params(),
        "priority": priority,
        "stream": body.stream,
    }
    if endpoint is not None:
        fields["endpoint"] = endpoint
    try:
        if isinstance(body, ChatBody):
            messages = [message.as_message() for message in body.messages]
            return GenerationRequest(messages=messages, chat=True, **fields)
        params = {k: v for k, v in fields["params"].items() if k != "prompt"}
        return GenerationRequest(prompt=body.text, template="raw", **{**fields, "params": params})
    except (ValidationError, ValueError) as err:
        raise OpenAIError(400, describe(err)) from None


def describe(err: Exception) -> str:
    """A validation error in words, without the input."""
    if not isinstance(err, ValidationError):
        return str(err)
    parts = []
    for problem in err.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in problem["loc"] if p != "body") or "body"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)


Kind = Literal["completion", "chat"]


def response(kind: Kind, status: TaskStatus, model: str) -> dict[str, Any]:
    """A whole OpenAI answer from a succeeded task (``id`` is the task id)."""
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
        "model": model,
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
            "model": model,
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
