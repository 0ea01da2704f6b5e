"""A completion or chat body validated like FastAPI would, and the text generated for it."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from genqueue.simulator.error_bodies import validation_item

DEFAULT_MAX_TOKENS = 512  # text-generation-webui's default
MAX_WORDS = 16
WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "queue", "worker",
    "token", "model", "prompt", "answer", "light", "river", "stone", "cloud", "signal",
    "garden", "window", "paper", "silver", "orange", "valley", "engine", "market", "winter",
    "coffee", "planet", "mirror", "thread",
)  # fmt: skip


@dataclass(frozen=True)
class GenParams:
    prompt: str
    max_tokens: int
    seed: int
    stop: tuple[str, ...]
    #: ``stream_options.include_usage``: the usage in a last chunk of the stream.
    include_usage: bool = False


def _int_field(body: dict[str, Any], name: str, default: int, errors: list[Any]) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    errors.append(
        validation_item("int_type", ["body", name], "Input should be a valid integer", value)
    )
    return default


def _stop_field(body: dict[str, Any], errors: list[Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return tuple(stop)
    msg = "Input should be a valid string"
    errors.append(validation_item("string_type", ["body", "stop"], msg, stop))
    return ()


def _missing(name: str, body: dict[str, Any]) -> dict[str, Any]:
    return validation_item("missing", ["body", name], "Field required", body)


def _completion_prompt(body: dict[str, Any], errors: list[Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    if prompt is None:
        errors.append(_missing("prompt", body))
    else:
        msg = "Input should be a valid string"
        errors.append(validation_item("string_type", ["body", "prompt"], msg, prompt))
    return ""


def _message_text(message: Any) -> str | None:
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return None


def _chat_prompt(body: dict[str, Any], errors: list[Any]) -> str:
    messages = body.get("messages")
    if messages is None:
        errors.append(_missing("messages", body))
        return ""
    texts = [_message_text(m) for m in messages] if isinstance(messages, list) else [None]
    if not messages or None in texts:
        msg = "Input should be a valid list of messages with string content"
        errors.append(validation_item("list_type", ["body", "messages"], msg, messages))
        return ""
    return "\n".join(t for t in texts if t is not None)


def parse_generation(raw: bytes, chat: bool) -> tuple[dict[str, Any] | None, GenParams | list[Any]]:
    """Validate a completion body like FastAPI would: (the body if an object, params or errors)."""
    if not raw.strip():
        return None, [validation_item("missing", ["body"], "Field required", None)]
    try:
        body = json.loads(raw)
    except ValueError as exc:
        loc = ["body", getattr(exc, "pos", 0)]
        return None, [validation_item("json_invalid", loc, "JSON decode error", {})]
    if not isinstance(body, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        return None, [validation_item("model_attributes_type", ["body"], msg, body)]
    errors: list[Any] = []
    prompt = _chat_prompt(body, errors) if chat else _completion_prompt(body, errors)
    max_tokens = _int_field(body, "max_tokens", DEFAULT_MAX_TOKENS, errors)
    seed = _int_field(body, "seed", -1, errors)
    stop = _stop_field(body, errors)
    if errors:
        return body, errors
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return body, GenParams(prompt, max_tokens, seed, stop, include_usage)


def generate_text(rng: random.Random, max_tokens: int, stop: tuple[str, ...]) -> tuple[str, str]:
    """Return (text, finish_reason): min(max_tokens, 16) words, cut at the first stop string."""
    text = " ".join(rng.choice(WORDS) for _ in range(max(0, min(max_tokens, MAX_WORDS))))
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if cuts:
        return text[: min(cuts)], "stop"
    return text, "length" if max_tokens <= MAX_WORDS else "stop"
