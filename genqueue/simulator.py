"""A fake text-generation-webui completions endpoint (standard library only).

Speaks the subset of text-generation-webui's OpenAI-compatible API that the worker uses, and is
used by the tests, the benchmark and ``genqueue up`` when no real endpoint is configured.

The HTTP server is a small hand-written HTTP/1.1 implementation on asyncio streams: one coroutine
per connection, keep-alive, ``Content-Length`` bodies only.

Fault injection is controlled at runtime over HTTP (the ``/_sim/*`` routes need no auth and are
never counted in the stats):

``POST /_sim/script``  ``{"actions": [...]}`` appends actions to a FIFO queue. Each completion
request (``/v1/completions`` or ``/v1/chat/completions``) that passes the API-key check pops the
next action; with an empty queue it behaves normally (subject to ``fail_rate``). Actions:

* ``"ok"``, ``"hang"``, ``"reset"``, ``"bad_json"``, ``"bad_shape"`` (strings), or the same as
  ``{"action": "hang", "delay_s": 1}``;
* ``{"status": 500, "body": "...", "content_type": "text/plain", "retry_after": "2",
  "error": "message", "delay_s": 1}`` (every key but ``status`` optional);
* ``{"delay_s": 3}``: a normal answer after 3 s instead of ``latency_s``;
* ``"size_bytes": N`` on a normal answer pads its text so the body is about N bytes (a serverless
  job's output too); on a status action without ``body``, the body is N bytes of text;
* ``"gzip": true`` sends the body gzip-compressed with ``Content-Encoding: gzip`` (with
  ``size_bytes``, a small download that inflates to N bytes: a gzip bomb).

``POST /_sim/config`` updates :class:`SimulatorConfig` fields live (``GET`` returns them),
``GET /_sim/stats`` returns :class:`SimulatorStats` as JSON, ``POST /_sim/reset`` clears the stats
and the script.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import itertools
import json
import logging
import random
import signal
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from http import HTTPStatus
from types import TracebackType
from typing import Any

__all__ = [
    "RunningSimulator",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "run",
    "serve_in_thread",
]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
STREAM_LIMIT = 2 * 1024 * 1024  # max request head size; also the stream buffer size
HISTORY = 100  # entries kept in the stats lists
MAX_WAIT_S = 600.0  # cap for hangs and scripted delays
IDLE_TIMEOUT_S = 300.0  # idle keep-alive connections are closed after this
DEFAULT_MAX_TOKENS = 512  # text-generation-webui's default
MAX_WORDS = 16
WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "queue", "worker",
    "token", "model", "prompt", "answer", "light", "river", "stone", "cloud", "signal",
    "garden", "window", "paper", "silver", "orange", "valley", "engine", "market", "winter",
    "coffee", "planet", "mirror", "thread",
)  # fmt: skip

_SIMPLE_ACTIONS = frozenset({"ok", "hang", "reset", "bad_json", "bad_shape"})
_ACTION_KEYS = frozenset(
    {"action", "status", "body", "content_type", "retry_after", "error", "delay_s", "size_bytes",
     "gzip"}
)  # fmt: skip
#: The largest body ``size_bytes`` may ask for.
MAX_SCRIPTED_BODY_BYTES = 256 * 1024 * 1024
_EXTRA_REASONS = {520: "Unknown Error", 522: "Connection Timed Out", 524: "A Timeout Occurred"}
_TEXT_PLAIN = "text/plain; charset=utf-8"


# --------------------------------------------------------------------------- public dataclasses


@dataclass
class SimulatorConfig:
    latency_s: float = 0.0  # time each completion takes before answering
    one_at_a_time: bool = False  # serialize generations (waiting requests count as in flight)
    model: str = "genqueue-simulated-model"
    api_key: str | None = None  # require "Authorization: Bearer <api_key>" on /v1/*
    fail_rate: float = 0.0  # fraction of completion requests failing with fail_status
    fail_status: int = 500
    retry_after_s: float | None = None  # Retry-After sent with injected 429s/503s
    seed: int | None = None  # RNG seed for the failure injection

    def __post_init__(self) -> None:
        for f in fields(self):
            error = _config_value_error(f.name, getattr(self, f.name))
            if error:
                raise ValueError(error)


@dataclass
class SimulatorStats:
    calls: int = 0  # completion requests (and serverless jobs) received, any outcome
    completions_ok: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    auth_headers: list[str] = field(default_factory=list)  # last 100 Authorization values
    last_bodies: list[dict[str, Any]] = field(default_factory=list)  # last 100 JSON bodies
    call_times: list[float] = field(default_factory=list)  # time.time() of the last 100 calls
    jobs_cancelled: int = 0  # serverless jobs cancelled through /cancel/<id>

    def copy(self) -> SimulatorStats:
        return replace(
            self,
            auth_headers=list(self.auth_headers),
            last_bodies=list(self.last_bodies),
            call_times=list(self.call_times),
        )


# --------------------------------------------------------------------------- config validation

_NUMBER = (int, float)
_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "latency_s": _NUMBER,
    "one_at_a_time": (bool,),
    "model": (str,),
    "api_key": (str, type(None)),
    "fail_rate": _NUMBER,
    "fail_status": (int,),
    "retry_after_s": (*_NUMBER, type(None)),
    "seed": (int, type(None)),
}
_CONFIG_RANGES: dict[str, tuple[float, float]] = {
    "latency_s": (0.0, MAX_WAIT_S),
    "fail_rate": (0.0, 1.0),
    "fail_status": (100, 599),
    "retry_after_s": (0.0, 86400.0),
}


def _config_value_error(name: str, value: Any) -> str | None:
    """Return why ``value`` is not acceptable for config field ``name`` (None when it is)."""
    types = _CONFIG_TYPES.get(name)
    if types is None:
        return f"unknown config field {name!r}"
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        return f"{name}: invalid type {type(value).__name__}"
    bounds = _CONFIG_RANGES.get(name)
    if bounds and isinstance(value, int | float) and not bounds[0] <= value <= bounds[1]:
        return f"{name}: must be between {bounds[0]:g} and {bounds[1]:g}"
    return None


# --------------------------------------------------------------------------- HTTP plumbing


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False


class _HttpError(Exception):
    """A protocol-level error: answered with ``status`` and the connection is closed."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.response = _json_response(status, {"detail": detail}, close=True)


def _json_response(
    status: int,
    payload: Any,
    headers: tuple[tuple[str, str], ...] = (),
    *,
    close: bool = False,
) -> _Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _Response(status, body, "application/json", headers, close)


def _text_response(status: int, text: str, content_type: str = _TEXT_PLAIN) -> _Response:
    return _Response(status, text.encode(), content_type)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return _EXTRA_REASONS.get(status, "Unknown")


def _encode_response(response: _Response, keep_alive: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {response.status} {_reason(response.status)}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Connection: keep-alive" if keep_alive else "Connection: close",
    ]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _HttpError(400, "Malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _HttpError(400, "Malformed header line")
        headers[name.strip().lower()] = value.strip()
    method, target, version = parts
    return method, target.split("?", 1)[0], version, headers


def _content_length(headers: dict[str, str]) -> int:
    if "transfer-encoding" in headers:
        raise _HttpError(501, "Transfer-Encoding is not supported; send Content-Length")
    raw = headers.get("content-length", "0")
    if not raw.isdigit():
        raise _HttpError(400, "Invalid Content-Length")
    length = int(raw)
    if length > MAX_BODY_BYTES:
        raise _HttpError(413, "Request body too large")
    return length


def _wants_keep_alive(version: str, headers: dict[str, str]) -> bool:
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> _Request | None:
    """Read one request; None on a clean EOF or an idle timeout."""
    try:
        async with asyncio.timeout(IDLE_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _HttpError(400, "Incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise _HttpError(431, "Request head too large") from None
    except TimeoutError:
        return None
    method, path, version, headers = _parse_head(head)
    length = _content_length(headers)
    if length and headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = b""
    if length:
        async with asyncio.timeout(IDLE_TIMEOUT_S):
            body = await reader.readexactly(length)
    return _Request(method, path, headers, body, _wants_keep_alive(version, headers))


async def _wait_for_eof(reader: asyncio.StreamReader, cap_s: float) -> None:
    """Wait until the peer closes the connection (or ``cap_s`` passes), discarding input."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(cap_s):
            while await reader.read(65536):
                pass


def _set_linger_zero(writer: asyncio.StreamWriter) -> None:
    """Make the coming close send a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


# --------------------------------------------------------------------------- error bodies


def _openai_error(message: str, type_: str, code: Any, *, param: bool = True) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": type_}
    if param:
        error["param"] = None
    error["code"] = code
    return {"error": error}


def _validation_item(type_: str, loc: list[Any], msg: str, value: Any) -> dict[str, Any]:
    return {"type": type_, "loc": loc, "msg": msg, "input": value}


def _unauthorized() -> _Response:
    payload = _openai_error(
        "Invalid API key", "invalid_request_error", "invalid_api_key", param=False
    )
    return _json_response(401, payload)


def _error_response(status: int, message: str | None, retry_after: str | None) -> _Response:
    """The body text-generation-webui (or the proxy in front of it) sends for ``status``."""
    headers = (("Retry-After", retry_after),) if retry_after else ()
    if status == 500 and message is None:
        return replace(_text_response(500, "Internal Server Error"), headers=headers)
    if status == 524:
        return replace(_text_response(524, "error code: 524"), headers=headers)
    if status == 422:
        item = _validation_item("missing", ["body", "prompt"], message or "Field required", None)
        return _json_response(422, {"detail": [item]}, headers)
    if status == 429:
        body = _openai_error(message or "Rate limit exceeded", "rate_limit_error", 429, param=False)
        return _json_response(429, body, headers)
    if status == 400:
        body = _openai_error(message or "Bad Request", "invalid_request_error", None)
        return _json_response(400, body, headers)
    type_ = "server_error" if status >= 500 else "invalid_request_error"
    body = _openai_error(message or _reason(status), type_, status)
    return _json_response(status, body, headers)


# --------------------------------------------------------------------------- script actions


@dataclass(frozen=True)
class _Action:
    kind: str  # "ok", "status", "hang", "reset", "bad_json", "bad_shape"
    delay_s: float | None = None
    status: int = 200
    body: str | None = None
    content_type: str | None = None
    retry_after: str | None = None
    error: str | None = None
    size_bytes: int | None = None
    gzip: bool = False


_OK = _Action("ok")


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


def _status_action(raw: dict[str, Any], delay: float | None) -> _Action:
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
    return _Action("status", delay, status, body, content_type, retry_after, error, **shape)


def _parse_action(raw: Any) -> _Action:
    """Turn one scripted action (string or object) into an :class:`_Action`."""
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
    return _Action(kind, delay, **_action_shape(raw))


def _action_response(action: _Action, default_retry_after: str | None) -> _Response:
    if action.kind == "bad_json":
        return _Response(200, b"<html>not json</html>", "application/json")
    if action.kind == "bad_shape":
        return _json_response(200, {"unexpected": True})
    retry_after = action.retry_after
    if retry_after is None and action.status in (429, 503):
        retry_after = default_retry_after
    if action.body is None and action.size_bytes is not None:
        filler = _Response(action.status, b"x" * action.size_bytes, _TEXT_PLAIN)
        return _shaped(filler, action)
    if action.body is None:
        return _shaped(_error_response(action.status, action.error, retry_after), action)
    headers = (("Retry-After", retry_after),) if retry_after else ()
    content_type = action.content_type or _TEXT_PLAIN
    return _shaped(_Response(action.status, action.body.encode(), content_type, headers), action)


def _shaped(response: _Response, action: _Action) -> _Response:
    """``response`` gzip-compressed when the action asks for it."""
    if not action.gzip:
        return response
    headers = (*response.headers, ("Content-Encoding", "gzip"))
    return replace(response, body=gzip.compress(response.body, compresslevel=9), headers=headers)


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class _GenParams:
    prompt: str
    max_tokens: int
    seed: int
    stop: tuple[str, ...]


def _int_field(body: dict[str, Any], name: str, default: int, errors: list[Any]) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    errors.append(
        _validation_item("int_type", ["body", name], "Input should be a valid integer", value)
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
    errors.append(_validation_item("string_type", ["body", "stop"], msg, stop))
    return ()


def _missing(name: str, body: dict[str, Any]) -> dict[str, Any]:
    return _validation_item("missing", ["body", name], "Field required", body)


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
        errors.append(_validation_item("string_type", ["body", "prompt"], msg, prompt))
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
        errors.append(_validation_item("list_type", ["body", "messages"], msg, messages))
        return ""
    return "\n".join(t for t in texts if t is not None)


def _parse_generation(
    raw: bytes, chat: bool
) -> tuple[dict[str, Any] | None, _GenParams | list[Any]]:
    """Validate a completion body like FastAPI would: (the body if an object, params or errors)."""
    if not raw.strip():
        return None, [_validation_item("missing", ["body"], "Field required", None)]
    try:
        body = json.loads(raw)
    except ValueError as exc:
        loc = ["body", getattr(exc, "pos", 0)]
        return None, [_validation_item("json_invalid", loc, "JSON decode error", {})]
    if not isinstance(body, dict):
        msg = "Input should be a valid dictionary or object to extract fields from"
        return None, [_validation_item("model_attributes_type", ["body"], msg, body)]
    errors: list[Any] = []
    prompt = _chat_prompt(body, errors) if chat else _completion_prompt(body, errors)
    max_tokens = _int_field(body, "max_tokens", DEFAULT_MAX_TOKENS, errors)
    seed = _int_field(body, "seed", -1, errors)
    stop = _stop_field(body, errors)
    if errors:
        return body, errors
    return body, _GenParams(prompt, max_tokens, seed, stop)


def _generate_text(rng: random.Random, max_tokens: int, stop: tuple[str, ...]) -> tuple[str, str]:
    """Return (text, finish_reason): min(max_tokens, 16) words, cut at the first stop string."""
    text = " ".join(rng.choice(WORDS) for _ in range(max(0, min(max_tokens, MAX_WORDS))))
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if cuts:
        return text[: min(cuts)], "stop"
    return text, "length" if max_tokens <= MAX_WORDS else "stop"


# --------------------------------------------------------------------------- the simulator

_Handler = Callable[[_Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[Any]]


#: Serverless jobs the simulator remembers (the oldest are forgotten first).
MAX_JOBS = 10_000


@dataclass
class _Job:
    """A RunPod Serverless job: IN_QUEUE, IN_PROGRESS, then COMPLETED, FAILED or CANCELLED."""

    job_id: str
    state: str = "IN_QUEUE"
    output: Any = None
    error: str | None = None
    task: asyncio.Task[None] = field(init=False)

    def describe(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"id": self.job_id, "status": self.state}
        if self.output is not None:
            answer["output"] = self.output
        if self.error is not None:
            answer["error"] = self.error
        return answer


@dataclass(frozen=True)
class _Route:
    methods: frozenset[str]
    handler: _Handler
    control: bool = False  # /_sim/*: no auth, not counted
    counted: bool = False  # a completion route: recorded in the stats


class Simulator:
    """The fake endpoint. Run it with :meth:`start`/:meth:`stop` inside an event loop."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._stats = SimulatorStats()
        self._script: deque[_Action] = deque()
        self._fail_rng = random.Random(config.seed)
        self._text_rng = random.Random()
        self._generation_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        post, get = frozenset({"POST"}), frozenset({"GET"})
        self._routes: dict[str, _Route] = {
            "/v1/completions": _Route(post, self._completions, counted=True),
            "/v1/chat/completions": _Route(post, self._chat_completions, counted=True),
            "/v1/models": _Route(get, self._models),
            "/v1/internal/model/info": _Route(get, self._model_info),
            "/_sim/script": _Route(post, self._sim_script, control=True),
            "/_sim/config": _Route(get | post, self._sim_config, control=True),
            "/_sim/stats": _Route(get, self._sim_stats, control=True),
            "/_sim/reset": _Route(post, self._sim_reset, control=True),
            "/run": _Route(post, self._serverless_run, counted=True),
            "/runsync": _Route(post, self._serverless_runsync, counted=True),
        }
        # RunPod Serverless's job routes, matched by prefix: /status/<id>, /cancel/<id>.
        self._prefix_routes: dict[str, _Route] = {
            "/status/": _Route(get, self._serverless_status),
            "/cancel/": _Route(post, self._serverless_cancel),
        }
        self._jobs: dict[str, _Job] = {}

    @property
    def stats(self) -> SimulatorStats:
        """A snapshot of the statistics."""
        return self._stats.copy()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start listening; return the bound port."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._server = await asyncio.start_server(
            self._serve_connection, host, port, backlog=4096, limit=STREAM_LIMIT
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and drop every open connection (in-flight requests are not answered)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    # ---- connections

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._connection_loop(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): this task is ours, end it quietly (asyncio logs cancelled callbacks)
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    async def _connection_loop(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                request = await _read_request(reader, writer)
            except _HttpError as exc:
                writer.write(_encode_response(exc.response, keep_alive=False))
                await writer.drain()
                return
            if request is None:
                return
            response = await self._handle(request, reader, writer)
            if response is None:  # scripted hang/reset: drop the connection unanswered
                writer.transport.abort()
                return
            keep_alive = request.keep_alive and not response.close
            writer.write(_encode_response(response, keep_alive))
            await writer.drain()
            if not keep_alive:
                return

    async def _handle(
        self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Response | None:
        route = self._routes.get(request.path) or self._prefix_route(request.path)
        if route is None:
            return _json_response(404, {"detail": "Not Found"})
        if request.method not in route.methods:
            return _json_response(405, {"detail": "Method Not Allowed"})
        if route.counted:
            self._record_arrival(request)
        if not route.control and not self._authorized(request):
            return _unauthorized()
        try:
            result: _Response | None = await route.handler(request, reader, writer)
        except Exception:
            log.exception("simulator: error handling %s %s", request.method, request.path)
            return replace(_text_response(500, "Internal Server Error"), close=True)
        return result

    def _prefix_route(self, path: str) -> _Route | None:
        for prefix, route in self._prefix_routes.items():
            if path.startswith(prefix) and len(path) > len(prefix):
                return route
        return None

    def _authorized(self, request: _Request) -> bool:
        key = self.config.api_key
        return key is None or request.headers.get("authorization") == f"Bearer {key}"

    # ---- stats

    def _record_arrival(self, request: _Request) -> None:
        stats = self._stats
        stats.calls += 1
        _push(stats.call_times, time.time())
        auth = request.headers.get("authorization")
        if auth is not None:
            _push(stats.auth_headers, auth)

    @contextlib.contextmanager
    def _in_flight(self) -> Iterator[None]:
        stats = self._stats
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            yield
        finally:
            stats.in_flight -= 1

    # ---- /v1 routes

    async def _completions(
        self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Response | None:
        return await self._generation(request, reader, writer, chat=False)

    async def _chat_completions(
        self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Response | None:
        return await self._generation(request, reader, writer, chat=True)

    async def _generation(
        self,
        request: _Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        chat: bool,
    ) -> _Response | None:
        body, params = _parse_generation(request.body, chat)
        if body is not None:
            _push(self._stats.last_bodies, body)
        with self._in_flight():
            action = self._next_action()
            if action.kind != "ok":
                return await self._perform(action, reader, writer)
            if not isinstance(params, _GenParams):
                return _json_response(422, {"detail": params})
            await self._generate_delay(action.delay_s)
            return _shaped(self._answer(params, chat, action.size_bytes), action)

    def _next_action(self) -> _Action:
        if self._script:
            return self._script.popleft()
        config = self.config
        if config.fail_rate > 0 and self._fail_rng.random() < config.fail_rate:
            return _Action("status", status=config.fail_status)
        return _OK

    async def _perform(
        self, action: _Action, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Response | None:
        if action.kind == "hang":
            await _wait_for_eof(reader, MAX_WAIT_S)
            return None
        await _sleep(action.delay_s or 0.0)
        if action.kind == "reset":
            _set_linger_zero(writer)
            return None
        retry_after = self.config.retry_after_s
        return _action_response(action, None if retry_after is None else f"{retry_after:g}")

    async def _generate_delay(self, delay_s: float | None) -> None:
        delay = self.config.latency_s if delay_s is None else delay_s
        if self.config.one_at_a_time:
            async with self._generation_lock:
                await _sleep(delay)
        else:
            await _sleep(delay)

    def _answer(self, params: _GenParams, chat: bool, size_bytes: int | None = None) -> _Response:
        rng = self._text_rng
        if params.seed != -1:
            rng = random.Random(f"{params.seed}:{params.prompt}")
        text, finish_reason = _generate_text(rng, params.max_tokens, params.stop)
        if size_bytes is not None:  # scripted: a text that makes the body about this large
            text += "x" * max(0, size_bytes - len(text) - 400)
        prompt_tokens = max(1, len(params.prompt.split()))
        completion_tokens = len(text.split())
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice.update(text=text, logprobs=None)
        self._stats.completions_ok += 1
        return _json_response(200, {
            "id": f"conv-{next(self._ids)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.config.model,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        })  # fmt: skip

    async def _models(self, *_: Any) -> _Response:
        model = {"id": self.config.model, "object": "model", "created": 0, "owned_by": "user"}
        return _json_response(200, {"object": "list", "data": [model]})

    async def _model_info(self, *_: Any) -> _Response:
        return _json_response(200, {"model_name": self.config.model, "lora_names": []})

    # ---- RunPod Serverless: /run, /runsync, /status/<id>, /cancel/<id>

    async def _serverless_run(self, request: _Request, *_: Any) -> _Response:
        job = self._new_job(request)
        if isinstance(job, _Response):
            return job
        return _json_response(200, {"id": job.job_id, "status": job.state})

    async def _serverless_runsync(self, request: _Request, *_: Any) -> _Response:
        job = self._new_job(request)
        if isinstance(job, _Response):
            return job
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(job.task)
        return _json_response(200, job.describe())

    async def _serverless_status(self, request: _Request, *_: Any) -> _Response:
        job = self._jobs.get(request.path.rsplit("/", 1)[1])
        if job is None:
            return _json_response(404, {"error": "job not found"})
        return _json_response(200, job.describe())

    async def _serverless_cancel(self, request: _Request, *_: Any) -> _Response:
        job = self._jobs.get(request.path.rsplit("/", 1)[1])
        if job is None:
            return _json_response(404, {"error": "job not found"})
        if job.state in ("IN_QUEUE", "IN_PROGRESS"):
            job.task.cancel()
            job.state = "CANCELLED"
            self._stats.jobs_cancelled += 1
        return _json_response(200, {"id": job.job_id, "status": job.state})

    def _new_job(self, request: _Request) -> _Job | _Response:
        try:
            payload = json.loads(request.body or b"null")
            job_input = payload["input"]
            prompt = job_input.get("prompt")
            if prompt is None:
                prompt = "\n".join(str(m.get("content", "")) for m in job_input["messages"])
            sampling = job_input.get("sampling_params") or {}
        except (ValueError, KeyError, TypeError, AttributeError):
            message = "input must be {'input': {'prompt' or 'messages'}}"
            return _json_response(400, {"error": message})
        _push(self._stats.last_bodies, payload)
        params = _GenParams(
            str(prompt),
            int(sampling.get("max_tokens", DEFAULT_MAX_TOKENS)),
            int(sampling.get("seed", -1)),
            (),
        )
        job = _Job(job_id=f"job-{next(self._ids)}")
        job.task = asyncio.get_running_loop().create_task(self._run_job(job, params))
        self._jobs[job.job_id] = job
        while len(self._jobs) > MAX_JOBS:
            self._jobs.pop(next(iter(self._jobs)))
        return job

    async def _run_job(self, job: _Job, params: _GenParams) -> None:
        action = self._next_action()
        job.state = "IN_PROGRESS"
        with self._in_flight():
            await self._generate_delay(action.delay_s)
        if action.kind != "ok":
            job.state, job.error = "FAILED", f"injected failure: {action.kind} {action.status}"
            return
        answer = json.loads(self._answer(params, chat=False, size_bytes=action.size_bytes).body)
        choice = answer["choices"][0]
        job.state = "COMPLETED"
        job.output = [{
            "choices": [{"tokens": [choice["text"]], "finish_reason": choice["finish_reason"]}],
            "usage": {
                "input": answer["usage"]["prompt_tokens"],
                "output": answer["usage"]["completion_tokens"],
            },
        }]  # fmt: skip

    # ---- /_sim routes

    async def _sim_script(self, request: _Request, *_: Any) -> _Response:
        try:
            payload = json.loads(request.body or b"null")
            raw_actions = payload["actions"]
            if not isinstance(raw_actions, list):
                raise ValueError("'actions' must be a list")
            actions = [_parse_action(raw) for raw in raw_actions]
        except (ValueError, KeyError, TypeError) as exc:
            return _json_response(400, {"detail": f"invalid script: {exc}"})
        self._script.extend(actions)
        return _json_response(200, {"queued": len(self._script)})

    async def _sim_config(self, request: _Request, *_: Any) -> _Response:
        if request.method == "POST":
            try:
                update = json.loads(request.body or b"{}")
            except ValueError as exc:
                return _json_response(400, {"detail": f"invalid JSON: {exc}"})
            error = self._update_config(update)
            if error:
                return _json_response(400, {"detail": error})
        return _json_response(200, asdict(self.config))

    def _update_config(self, update: Any) -> str | None:
        if not isinstance(update, dict):
            return "config update must be a JSON object"
        for name, value in update.items():
            error = _config_value_error(name, value)
            if error:
                return error
        for name, value in update.items():
            setattr(self.config, name, value)
        if "seed" in update:
            self._fail_rng.seed(self.config.seed)
        return None

    async def _sim_stats(self, *_: Any) -> _Response:
        return _json_response(200, asdict(self._stats))

    async def _sim_reset(self, *_: Any) -> _Response:
        in_flight = self._stats.in_flight
        self._stats = SimulatorStats(in_flight=in_flight, max_in_flight=in_flight)
        self._script.clear()
        self._fail_rng.seed(self.config.seed)
        return _json_response(200, {"reset": True})


def _push(items: list[Any], item: Any) -> None:
    items.append(item)
    if len(items) > HISTORY:
        del items[: len(items) - HISTORY]


# --------------------------------------------------------------------------- running it


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _connect_host(host: str) -> str:
    """The address a local client should use for a server bound to ``host``."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


class RunningSimulator:
    """A :class:`Simulator` serving from an event loop in a daemon thread."""

    def __init__(
        self,
        simulator: Simulator,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop,
        stop_event: asyncio.Event,
        thread: threading.Thread,
    ) -> None:
        self.simulator = simulator
        self.host = host
        self.port = port
        self.url = _url(_connect_host(host), port)
        self._loop = loop
        self._stop_event = stop_event
        self._thread = thread

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the simulator and wait for its thread (idempotent)."""
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout_s)

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_Started = tuple[asyncio.AbstractEventLoop, asyncio.Event, int]


async def _serve_until_stopped(
    simulator: Simulator, host: str, port: int, started: concurrent.futures.Future[_Started]
) -> None:
    try:
        bound = await simulator.start(host, port)
    except Exception as exc:
        started.set_exception(exc)
        return
    stop_event = asyncio.Event()
    started.set_result((asyncio.get_running_loop(), stop_event, bound))
    try:
        await stop_event.wait()
    finally:
        await simulator.stop()


def serve_in_thread(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> RunningSimulator:
    """Start a simulator on its own event loop in a daemon thread; return once it is bound."""
    simulator = Simulator(config)
    started: concurrent.futures.Future[_Started] = concurrent.futures.Future()
    thread = threading.Thread(
        target=asyncio.run,
        args=(_serve_until_stopped(simulator, host, port, started),),
        name="genqueue-simulator",
        daemon=True,
    )
    thread.start()
    loop, stop_event, bound = started.result(timeout=30)
    return RunningSimulator(simulator, host, bound, loop, stop_event, thread)


async def _serve_until_signalled(host: str, port: int, config: SimulatorConfig) -> None:
    simulator = Simulator(config)
    bound = await simulator.start(host, port)
    print(f"simulator listening on {_url(host, bound)}", flush=True)
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop_event.set)
    try:
        await stop_event.wait()
    finally:
        await simulator.stop()


def run(host: str, port: int, config: SimulatorConfig) -> None:
    """Serve until SIGINT/SIGTERM (blocking); for ``genqueue simulate``."""
    asyncio.run(_serve_until_signalled(host, port, config))
