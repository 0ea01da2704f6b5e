"""What Celery's messages and events say about a task: short summaries, never its content.

Celery writes a task's arguments into every message it sends (``argsrepr``/``kwargsrepr``, a
``repr`` of up to 1 KB unless the sender gives its own) and its return value into the
task-succeeded event. Flower shows both and saves them in ``flower.db``. genqueue gives its own
everywhere it sends a message (the producers, a retry, the lost-message sweep, a webhook) and for
every success, so Flower sees lengths and names: never a prompt, an output, metadata, params or a
webhook URL (whose query may hold the receiver's token).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from worker.contract import ENDPOINT_NAME_PATTERN
from worker.webhooks.url_check import webhook_host

#: The ``argsrepr`` of every message genqueue sends (its tasks take keyword arguments only).
NO_ARGS = "()"
_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ENDPOINT_NAME = re.compile(ENDPOINT_NAME_PATTERN)


def _name(value: Any, pattern: re.Pattern[str], missing: str) -> str:
    """A template or endpoint name as given, if it is one (an invalid request shows no text)."""
    if value is None:
        return missing
    return value if isinstance(value, str) and pattern.match(value) else "(invalid)"


def _text_chars(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


def _message_chars(messages: Sequence[Any]) -> int:
    return sum(_text_chars(m.get("content")) for m in messages if isinstance(m, Mapping))


def payload_summary(payload: Any) -> str:
    """The ``kwargsrepr`` of a ``genqueue.generate`` message whose ``request`` is ``payload``:
    its template, endpoint and lengths, as JSON. ``payload`` need not be a valid request."""
    if not isinstance(payload, Mapping):
        return json.dumps({"request": f"(not a JSON object: {type(payload).__name__})"})
    parts: dict[str, Any] = {
        "template": _name(payload.get("template"), _TEMPLATE_NAME, "(default)"),
        "endpoint": _name(payload.get("endpoint"), _ENDPOINT_NAME, "(default)"),
    }
    messages = payload.get("messages")
    if isinstance(messages, Sequence) and not isinstance(messages, str):
        parts["messages"] = len(messages)
        parts["chars"] = _message_chars(messages)
    else:
        parts["chars"] = _text_chars(payload.get("prompt"))
    if payload.get("system") is not None:
        parts["system_chars"] = _text_chars(payload.get("system"))
    return json.dumps(parts)


def request_summary(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """:func:`payload_summary` of a ``genqueue.generate`` call as Celery hands it over
    (``request=...``, or one positional argument from a plain Celery client)."""
    if not args and set(kwargs) == {"request"}:
        return payload_summary(kwargs["request"])
    if len(args) == 1 and not kwargs:
        return payload_summary(args[0])
    return json.dumps({"arguments": f"({len(args)} positional, {len(kwargs)} keyword)"})


def webhook_summary(task_id: Any, url: Any) -> str:
    """The ``kwargsrepr`` of a ``genqueue.webhook`` message: the task and the receiving host."""
    host = webhook_host(url) if isinstance(url, str) else None
    return f"{{'task_id': {task_id!r}, 'host': {host!r}}}"


def result_summary(result: Any) -> str:
    """The ``result`` of a ``genqueue.generate`` task-succeeded event: how it ended and how
    long the text is, e.g. ``{'finish_reason': 'stop', 'chars': 123}``."""
    if not isinstance(result, Mapping):
        return f"({type(result).__name__})"
    finish_reason = result.get("finish_reason")
    reason = finish_reason if isinstance(finish_reason, str) and len(finish_reason) <= 32 else None
    return repr({"finish_reason": reason, "chars": _text_chars(result.get("text"))})
