"""HTTP/1.1 on asyncio streams: read a request, write a response, the route table's entries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

MAX_BODY_BYTES = 8 * 1024 * 1024
STREAM_LIMIT = 2 * 1024 * 1024  # max request head size; also the stream buffer size
IDLE_TIMEOUT_S = 300.0  # idle keep-alive connections are closed after this
TEXT_PLAIN = "text/plain; charset=utf-8"
_EXTRA_REASONS = {520: "Unknown Error", 522: "Connection Timed Out", 524: "A Timeout Occurred"}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False
    #: A streamed body, sent with chunked transfer encoding as it comes (``body`` unused).
    stream: AsyncIterator[bytes] | None = None


class HttpError(Exception):
    """A protocol-level error: answered with ``status`` and the connection is closed."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.response = json_response(status, {"detail": detail}, close=True)


def json_response(
    status: int,
    payload: Any,
    headers: tuple[tuple[str, str], ...] = (),
    *,
    close: bool = False,
) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, "application/json", headers, close)


def text_response(status: int, text: str, content_type: str = TEXT_PLAIN) -> Response:
    return Response(status, text.encode(), content_type)


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return _EXTRA_REASONS.get(status, "Unknown")


def encode_response(response: Response, keep_alive: bool) -> bytes:
    length = (
        "Transfer-Encoding: chunked"
        if response.stream is not None
        else f"Content-Length: {len(response.body)}"
    )
    lines = [
        f"HTTP/1.1 {response.status} {reason(response.status)}",
        f"Content-Type: {response.content_type}",
        length,
        "Connection: keep-alive" if keep_alive else "Connection: close",
    ]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise HttpError(400, "Malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(400, "Malformed header line")
        headers[name.strip().lower()] = value.strip()
    method, target, version = parts
    return method, target.split("?", 1)[0], version, headers


def _content_length(headers: dict[str, str]) -> int:
    if "transfer-encoding" in headers:
        raise HttpError(501, "Transfer-Encoding is not supported; send Content-Length")
    raw = headers.get("content-length", "0")
    if not raw.isdigit():
        raise HttpError(400, "Invalid Content-Length")
    length = int(raw)
    if length > MAX_BODY_BYTES:
        raise HttpError(413, "Request body too large")
    return length


def _wants_keep_alive(version: str, headers: dict[str, str]) -> bool:
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    if version == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


async def read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Request | None:
    """Read one request; None on a clean EOF or an idle timeout."""
    try:
        async with asyncio.timeout(IDLE_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise HttpError(400, "Incomplete request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise HttpError(431, "Request head too large") from None
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
    return Request(method, path, headers, body, _wants_keep_alive(version, headers))


async def wait_for_eof(reader: asyncio.StreamReader, cap_s: float) -> None:
    """Wait until the peer closes the connection (or ``cap_s`` passes), discarding input."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(cap_s):
            while await reader.read(65536):
                pass


def set_linger_zero(writer: asyncio.StreamWriter) -> None:
    """Make the coming close send a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def write_stream(writer: asyncio.StreamWriter, stream: AsyncIterator[bytes]) -> None:
    """Send ``stream`` in chunks, each as soon as it is there, then the last (empty) chunk."""
    async for data in stream:
        if data:
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
    writer.write(b"0\r\n\r\n")


async def sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


Handler = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    handler: Handler
    control: bool = False  # /_sim/*: no auth, not counted
    counted: bool = False  # a completion route: recorded in the stats
