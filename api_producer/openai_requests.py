"""OpenAI's request bodies, as genqueue tasks.

Pure translation: no Redis, no HTTP. ``model`` names a configured endpoint; the rest of a
request's sampling fields become the task's ``params`` (the server's own extra fields pass
through as they do in ``POST /v1/tasks``; the endpoint's kind decides which it takes). A
completion's ``prompt`` is sent as it is (template ``raw``); chat ``messages`` go to the
endpoint's chat route (``chat``), whose server applies its own chat template, as an OpenAI
client expects. A field genqueue cannot honour is refused (400, ``param`` naming it), never
dropped: an answer to a request that lost a part of it would mean something else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from api_producer.openai_format import OpenAIError
from worker.contract import GenerationRequest, Message, finite

#: OpenAI fields genqueue takes but does not send on (it answers them itself).
NOT_FORWARDED = frozenset({"model", "stream", "stream_options", "n", "user", "echo"})
#: OpenAI's ``developer`` role is a system message to the servers genqueue calls.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
#: What a refused request is told: genqueue stores text and gives back text and usage.
_NO_LOGPROBS = "genqueue does not return log probabilities"


def refusal(param: str, message: str) -> PydanticCustomError:
    """A validation error of the request that names its OpenAI ``param``."""
    return PydanticCustomError("openai_refused", "{message}", {"param": param, "message": message})


class _Sampling(BaseModel):
    """What both routes share; unknown fields are the server's extra sampler fields."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=64)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    n: int | None = None
    logprobs: bool | int | None = None
    top_logprobs: int | None = None

    @model_validator(mode="after")
    def _supported(self) -> _Sampling:
        if self.n not in (None, 1):
            raise refusal("n", "n: genqueue generates one choice per request")
        if self.stream_options is not None and not self.stream:
            raise refusal("stream_options", "stream_options: only with stream: true")
        asked = self.logprobs is not None and self.logprobs is not False  # 0 asks for them
        if asked or self.top_logprobs is not None:
            param = "logprobs" if asked else "top_logprobs"
            raise refusal(param, f"{param}: {_NO_LOGPROBS}")
        for name, value in self.params().items():
            if not finite(value):
                raise refusal(name, f"{name}: must be a finite number")
        return self

    def params(self) -> dict[str, Any]:
        fields = {**self.model_dump(exclude_none=True), **(self.model_extra or {})}
        forwarded = NOT_FORWARDED | {"logprobs", "top_logprobs"}
        return {k: v for k, v in fields.items() if k not in forwarded and v is not None}

    @property
    def streamed(self) -> bool:
        return bool(self.stream)

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionBody(_Sampling):
    prompt: str | list[str]
    echo: bool | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionBody:
        if self.echo:
            raise refusal("echo", "echo: genqueue does not echo the prompt")
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise refusal("prompt", "prompt: genqueue takes one prompt per request")
        return self

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def as_message(self, index: int) -> Message:
        where = f"messages[{index}]"
        role = ROLES.get(self.role)
        if role is None:
            raise OpenAIError(
                400, f"{where}.role: {self.role!r} is not supported by genqueue", param=where
            )
        # tool_calls, function_call, audio, name...: a message is its role and its text.
        for name, value in sorted((self.model_extra or {}).items()):
            if value is not None:
                raise OpenAIError(
                    400, f"{where}.{name}: genqueue sends a message's role and text only",
                    param=f"{where}.{name}",
                )  # fmt: skip
        content = self.content
        if isinstance(content, list):
            content = "".join(_text_parts(content, where))
        return Message.model_validate({"role": role, "content": content or ""})


def _text_parts(parts: list[dict[str, Any]], where: str) -> list[str]:
    """The text of content parts; any other part (``image_url``, audio, a file) is refused."""
    texts = []
    for index, part in enumerate(parts):
        kind = part.get("type")
        if kind != "text":
            param = f"{where}.content[{index}]"
            raise OpenAIError(
                400, f"{param}: a content part of type {kind!r}; genqueue sends text only",
                param=param,
            )  # fmt: skip
        texts.append(str(part.get("text", "")))
    return texts


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
        "stream": body.streamed,
    }
    if endpoint is not None:
        fields["endpoint"] = endpoint
    try:
        if isinstance(body, ChatBody):
            messages = [message.as_message(i) for i, message in enumerate(body.messages)]
            return GenerationRequest(messages=messages, chat=True, **fields)
        params = {k: v for k, v in fields["params"].items() if k != "prompt"}
        return GenerationRequest(prompt=body.text, template="raw", **{**fields, "params": params})
    except ValidationError as err:
        message, param = describe(err.errors(include_input=False, include_url=False))
        raise OpenAIError(400, message, param=param) from None


def describe(problems: Sequence[Mapping[str, Any]]) -> tuple[str, str | None]:
    """Validation problems in words, without the input, and the OpenAI ``param`` of the first
    (``params.`` left out: an OpenAI body has its sampling fields at the top)."""
    parts = []
    params = []
    for problem in problems:
        context = problem.get("ctx") or {}
        if problem["type"] == "openai_refused":
            parts.append(str(context["message"]))
            params.append(str(context["param"]))
            continue
        loc = [str(p) for p in problem["loc"] if p not in ("body", "params")]
        message = problem["msg"].removeprefix("Value error, ")
        if loc:
            params.append(".".join(loc))
            message = f"{'.'.join(loc)}: {message}"
        parts.append(message.removeprefix("params."))
    return "; ".join(parts), (params[0] if params else None)
