"""The wire contract: what producers send and what the worker stores.

This module imports nothing but pydantic and the standard library, so the HTTP API, the Python
client and any service that only has pydantic can share it. Producers enqueue by ``TASK_NAME`` with
``kwargs={"request": GenerationRequest.model_dump(mode="json", exclude_none=True)}``.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

TASK_NAME = "genqueue.generate"
ENDPOINT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
TENANT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: The queue genqueue's own producers use. Workers also consume Celery's default queue
#: ``celery`` so that a plain ``send_task("genqueue.generate", ...)`` is served.
QUEUE_NAME = "genqueue"
CELERY_DEFAULT_QUEUE = "celery"

PRIORITY_MIN = 0
PRIORITY_MAX = 9
PRIORITY_DEFAULT = 5

#: Limits enforced on every request, whichever way it arrives.
PROMPT_MAX_CHARS = 200_000
MESSAGES_MAX = 256
MAX_TOKENS_LIMIT = 32_768
METADATA_MAX_KEYS = 32
METADATA_MAX_CHARS = 4_096
WEBHOOK_URL_MAX_CHARS = 2_048

BUILTIN_TEMPLATES = ("chatml", "llama2", "alpaca", "vicuna", "mistral", "raw")
#: ``params`` keys that belong to genqueue, not to the caller.
RESERVED_PARAMS = frozenset({"prompt", "messages", "stream", "model", "n", "echo"})
#: ``params`` that are JSON objects by their nature (OpenAI's token biases, structured output);
#: every other one is a scalar or a list. Which server kind takes them is the kind's own table.
OBJECT_PARAMS = frozenset({"logit_bias", "response_format"})


class Message(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=PROMPT_MAX_CHARS)


class GenerationParams(BaseModel):
    """Sampling parameters, sent to ``/v1/completions`` as they are.

    The OpenAI fields are typed; the server's extra sampler fields (``top_k``, ``min_p``,
    ``repetition_penalty``, ...) pass through when they are JSON scalars or lists.
    """

    model_config = ConfigDict(extra="allow")

    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(default=None, ge=0, le=5, allow_inf_nan=False)
    top_p: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    seed: int | None = None
    stop: str | list[str] | None = None

    @model_validator(mode="after")
    def _check_extra(self) -> GenerationParams:
        for key, value in (self.model_extra or {}).items():
            if key in RESERVED_PARAMS:
                raise ValueError(f"params.{key} is set by genqueue and cannot be given")
            if isinstance(value, dict) and key not in OBJECT_PARAMS:
                raise ValueError(f"params.{key} must be a scalar or a list, not an object")
            if not finite(value):
                # JSON has no NaN or Infinity: stored, it would become null and not be sent.
                raise ValueError(f"params.{key} must be a finite number")
        return self


def finite(value: Any) -> bool:
    """Whether ``value`` (JSON-like) holds no NaN and no infinity, however deep."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite(item) for item in value.values())
    if isinstance(value, list):
        return all(finite(item) for item in value)
    return True


class GenerationRequest(BaseModel):
    """A generation task as producers submit it (the HTTP body and the Celery payload)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(default=None, max_length=PROMPT_MAX_CHARS)
    messages: list[Message] | None = Field(default=None, min_length=1, max_length=MESSAGES_MAX)
    system: str | None = Field(default=None, max_length=PROMPT_MAX_CHARS)
    #: ``chatml`` unless the request, or else its endpoint, names another.
    template: str = Field(
        default="chatml", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$"
    )
    #: A configured endpoint's name; the default endpoint when omitted.
    endpoint: str | None = Field(default=None, pattern=ENDPOINT_NAME_PATTERN)
    #: Send ``messages`` to the endpoint's chat route as they are (its own chat template).
    chat: bool = False
    #: Stream the answer: the worker calls the endpoint with ``stream: true`` and appends each
    #: piece of text, as it arrives, to the task's token stream (``GET /v1/tasks/{id}/stream``).
    stream: bool = False
    params: GenerationParams = Field(default_factory=GenerationParams)
    priority: int = Field(default=PRIORITY_DEFAULT, ge=PRIORITY_MIN, le=PRIORITY_MAX)
    metadata: dict[str, JsonValue] | None = None
    #: When the result stops being useful: a task not finished by then ends failed, type
    #: ``expired``, and is not sent to the endpoint. An ISO 8601 time with a timezone.
    deadline: AwareDatetime | None = None
    #: Where genqueue POSTs the final status, signed (see the README). http or https; the API
    #: refuses private and loopback addresses unless the operator allowlists them. Read with
    #: urllib3's parser, which this module does not import: by the API before a task is
    #: stored and by the worker (worker.pipeline.payload), not by this model.
    webhook_url: str | None = Field(
        default=None,
        max_length=WEBHOOK_URL_MAX_CHARS,
        description="POSTed the final status, signed (Genqueue-Signature); http(s) only",
    )
    #: The tenant the task belongs to. Set by the API from the caller's key (an HTTP body may
    #: not name one); trusted from Celery and direct producers; ``internal`` when absent.
    tenant: str | None = Field(default=None, pattern=TENANT_NAME_PATTERN)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        # Before any field: pydantic lets a lone surrogate through in some fields (JsonValue,
        # unions), and Redis and JSON answers cannot encode it later.
        problem = unicode_problem(data)
        if problem is not None:
            raise PydanticCustomError("string_unicode", problem)
        return data

    @model_validator(mode="after")
    def _one_input(self) -> GenerationRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.messages is not None and self.system is not None:
            raise ValueError("'system' goes with 'prompt'; put a system message in 'messages'")
        return self

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, JsonValue] | None) -> dict[str, JsonValue] | None:
        if value is None:
            return value
        if len(value) > METADATA_MAX_KEYS:
            raise ValueError(f"metadata has more than {METADATA_MAX_KEYS} keys")
        if len(_compact_json(value)) > METADATA_MAX_CHARS:
            raise ValueError(f"metadata is larger than {METADATA_MAX_CHARS} characters as JSON")
        return value

    def to_payload(self) -> dict[str, Any]:
        """The ``request`` kwarg of a ``genqueue.generate`` message (fields left unset stay
        unset, so the worker can tell a chosen template from the default)."""
        return self.model_dump(mode="json", exclude_none=True, exclude_unset=True)


#: Characters per token of a text's estimate (the usual rule of thumb for English), where no
#: server counted: a tenant's hold on its day budget, the prompt of a stream without usage.
CHARS_PER_TOKEN = 4


def estimate_tokens(chars: int) -> int:
    """The tokens of a text of ``chars`` characters, estimated."""
    return -(-chars // CHARS_PER_TOKEN)


def request_tokens_estimate(request: GenerationRequest, default_max_tokens: int) -> int:
    """The tokens a request may spend at most, as far as can be told before it runs: its
    prompt's estimate (system and messages included) plus its ``max_tokens`` (else
    ``default_max_tokens``). What a submission holds of its tenant's ``tokens_per_day``, and a
    turn's cost at an endpoint that is fair by tokens (docs/scheduling.md)."""
    chars = len(request.prompt or "") + len(request.system or "")
    chars += sum(len(message.content) for message in request.messages or ())
    return estimate_tokens(chars) + (request.params.max_tokens or default_max_tokens)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class GenerationResult(BaseModel):
    """What a successful task returns (and what ``AsyncResult.get()`` gives back)."""

    @field_validator("text", "finish_reason", "model", "endpoint")
    @classmethod
    def _valid_unicode(cls, value: str | None) -> str | None:
        return _repaired(value)

    text: str
    finish_reason: str | None
    #: The endpoint's configured model name, else the server's answer.
    model: str | None
    usage: Usage
    latency_ms: int
    #: The endpoint that served it, and every endpoint tried, in order (fallbacks).
    endpoint: str | None = None
    endpoints_tried: list[str] | None = None
    #: ``model`` as the server answered it (llama.cpp: the model file's path).
    server_model: str | None = None


class ErrorInfo(BaseModel):
    """Why a task failed: a stable ``type`` and a readable ``message``."""

    type: str
    message: str

    @field_validator("type", "message")
    @classmethod
    def _valid_unicode(cls, value: str) -> str:
        return replace_lone_surrogates(value)


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


class TaskAccepted(BaseModel):
    task_id: str
    status: TaskState = TaskState.QUEUED


class TaskStatus(BaseModel):
    task_id: str
    status: TaskState
    attempts: int
    result: GenerationResult | None = None
    error: ErrorInfo | None = None
    #: Why the last attempt failed, while the task is not over (retrying, or running again).
    last_error: ErrorInfo | None = None
    metadata: dict[str, JsonValue] | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    #: While queued: the tasks that will get a slot of its endpoint before it, as the scheduler
    #: sees them now (docs/scheduling.md); ``None`` otherwise.
    queue_position: int | None = None
    #: While queued: ``queue_position`` over the recent completions a second; ``None``
    #: otherwise, or when no task ended in the last minute.
    estimated_start_s: float | None = None


def unicode_problem(value: Any, where: str = "") -> str | None:
    """Why ``value`` (a string, or JSON-like lists and dicts of them) cannot be UTF-8 encoded.

    ``None`` when every string and key in it can be. JSON lets an escape such as ``"\\udfff"``
    spell a lone surrogate, which Python decodes to a ``str`` that no UTF-8 encoder accepts:
    the request would be stored and then break every read of it. The answer names the place
    (``metadata.tags.0``) and the code point, never the string itself.
    """
    pending: list[tuple[str, Any]] = [(where, value)]
    while pending:  # a loop, not recursion: nesting depth is the sender's choice
        path, item = pending.pop()
        if isinstance(item, str):
            problem = _surrogate(item)
            if problem is not None:
                return f"{path or 'value'}: not valid Unicode ({problem})"
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and _surrogate(key) is not None:
                    return f"{path or 'value'}: a key is not valid Unicode ({_surrogate(key)})"
                pending.append((_join(path, key), child))
        elif isinstance(item, list | tuple):
            pending.extend((_join(path, index), child) for index, child in enumerate(item))
    return None


def replace_lone_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD.

    For what genqueue passes on rather than judges (an endpoint's output and error words):
    refusing them would throw away a finished generation, keeping them would break every read.
    """
    return text if _surrogate(text) is None else _LONE_SURROGATE.sub("\ufffd", text)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _repaired(value: str | None) -> str | None:
    return replace_lone_surrogates(value) if value is not None else None


def _surrogate(text: str) -> str | None:
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"a lone surrogate U+{ord(text[err.start]):04X} at character {err.start}"
    return None


def _join(path: str, part: object) -> str:
    return f"{path}.{part}" if path else str(part)


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
