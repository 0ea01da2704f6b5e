"""The scripted actions of ``POST /_sim/script``: parsed, checked, queued, and answered."""

from __future__ import annotations

import gzip
import json
import random
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from genqueue.simulator.config import MAX_WAIT_S, SimulatorConfig
from genqueue.simulator.error_bodies import error_response
from genqueue.simulator.protocol import TEXT_PLAIN, Response, json_response

#: ``empty_stream``: 200 and a stream closed before its first chunk (text-generation-webui with
#: no model loaded); ``break_stream``: two pieces, then the connection is dropped.
_SIMPLE_ACTIONS = frozenset(
    {"ok", "hang", "reset", "bad_json", "bad_shape", "empty_stream", "break_stream"}
)
_ACTION_KEYS = frozenset(
    {"action", "status", "body", "content_type", "retry_after", "error", "delay_s", "size_bytes",
     "gzip"}
)  # fmt: skip
#: The largest body ``size_bytes`` may ask for.
MAX_SCRIPTED_BODY_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Action:
    kind: str  # "ok", "status", "hang", "reset", "bad_json", "bad_shape"
    delay_s: float | None = None
    status: int = 200
    body: str | None = None
    content_type: str | None = None
    retry_after: str | None = None
    error: str | None = None
    size_bytes: int | None = None
    gzip: bool = False


OK = Action("ok")


def _action_shape(raw: dict[str, Any]) -> dict[str, Any]:
    """The ``size_bytes`` and ``gzip`` of a scripted action, checked."""
    size, compress = raw.get("size_bytes"), raw.get("gzip", False)
    if size is not None and (
        isinstance(size, bool)
        or not isinstance(size, int)
        or not 0 <= size <= MAX_SCRIPTED_BODY_BYTES
    ):
        raise ValueError(f"size_bytes: must be an integer from 0 to {MAX_SCRIPTED_BODY_BYTES}")
    if not isinstance(compress, bool):
        raise ValueError("gzip: must be true or false")
    return {"size_bytes": size, "gzip": compress}


def _header_value(raw: Any, name: str) -> str:
    value = f"{raw:g}" if isinstance(raw, int | float) and not isinstance(raw, bool) else raw
    if not isinstance(value, str) or "\r" in value or "\n" in value or not value.isprintable():
        raise ValueError(f"{name}: must be a single-line string")
    value.encode("latin-1")  # raises UnicodeEncodeError (a ValueError) when not encodable
    return value


def _action_delay(raw: dict[str, Any]) -> float | None:
    delay = raw.get("delay_s")
    if delay is None:
        return None
    if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
        raise ValueError("delay_s: must be a non-negative number")
    return min(float(delay), MAX_WAIT_S)


def _action_body(raw: dict[str, Any]) -> tuple[str | None, str | None]:
    body, content_type = raw.get("body"), raw.get("content_type")
    if content_type is not None:
        content_type = _header_value(content_type, "content_type")
    if body is None or isinstance(body, str):
        return body, content_type
    return json.dumps(body), content_type or "application/json"


def _status_action(raw: dict[str, Any], delay: float | None) -> Action:
    status = raw["status"]
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise ValueError("status: must be an integer between 100 and 599")
    error = raw.get("error")
    if error is not None and not isinstance(error, str):
        raise ValueError("error: must be a string")
    retry_after = raw.get("retry_after")
    if retry_after is not None:
        retry_after = _header_value(retry_after, "retry_after")
    body, content_type = _action_body(raw)
    shape = _action_shape(raw)
    return Action("status", delay, status, body, content_type, retry_after, error, **shape)


def parse_action(raw: Any) -> Action:
    """Turn one scripted action (string or object) into an :class:`Action`."""
    if isinstance(raw, str):
        raw = {"action": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"action must be a string or an object, not {raw!r}")
    unknown = set(raw) - _ACTION_KEYS
    if unknown:
        raise ValueError(f"unknown action keys: {sorted(unknown)}")
    delay = _action_delay(raw)
    if "status" in raw:
        if raw.get("action", "ok") != "ok":
            raise ValueError("'status' cannot be combined with 'action'")
        return _status_action(raw, delay)
    kind = raw.get("action", "ok")
    if kind not in _SIMPLE_ACTIONS:
        raise ValueError(f"unknown action {kind!r}; expected one of {sorted(_SIMPLE_ACTIONS)}")
    return Action(kind, delay, **_action_shape(raw))


def action_response(action: Action, default_retry_after: str | None) -> Response:
    if action.kind == "bad_json":
        return Response(200, b"<html>not json</html>", "application/json")
    if action.kind == "bad_shape":
        return json_response(200, {"unexpected": True})
    retry_after = action.retry_after
    if retry_after is None and action.status in (429, 503):
        retry_after = default_retry_after
    if action.body is None and action.size_bytes is not None:
        filler = Response(action.status, b"x" * action.size_bytes, TEXT_PLAIN)
        return shaped(filler, action)
    if action.body is None:
        return shaped(error_response(action.status, action.error, retry_after), action)
    headers = (("Retry-After", retry_after),) if retry_after else ()
    content_type = action.content_type or TEXT_PLAIN
    return shaped(Response(action.status, action.body.encode(), content_type, headers), action)


def shaped(response: Response, action: Action) -> Response:
    """``response`` gzip-compressed when the action asks for it."""
    if not action.gzip:
        return response
    headers = (*response.headers, ("Content-Encoding", "gzip"))
    return replace(response, body=gzip.compress(response.body, compresslevel=9), headers=headers)


class Script:
    """The queue of scripted actions; once it is empty, the configured failure rate decides."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._config = config
        self._actions: deque[Action] = deque()
        self._fail_rng = random.Random(config.seed)

    def extend(self, actions: list[Action]) -> int:
        """Queue ``actions``; return how many are queued now."""
        self._actions.extend(actions)
        return len(self._actions)

    def next_action(self) -> Action:
        if self._actions:
            return self._actions.popleft()
        config = self._config
        if config.fail_rate > 0 and self._fail_rng.random() < config.fail_rate:
            return Action("status", status=config.fail_status)
        return OK

    def reseed(self) -> None:
        """Start the failure draws again from the configured seed."""
        self._fail_rng.seed(self._config.seed)

    def clear(self) -> None:
        self._actions.clear()
        self.reseed()
