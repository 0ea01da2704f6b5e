"""The simulator's streamed answers, in text-generation-webui's own format.

text-generation-webui's OpenAI extension answers ``stream: true`` through sse_starlette: each
chunk as ``data: <json.dumps(chunk)>`` and ``\\r\\n\\r\\n``, chunked transfer encoding, first a
chunk with empty text (chat: ``delta`` ``{"role": "assistant", "content": ""}``), one chunk per
new piece of text, then a last chunk with empty text and the ``finish_reason``; object
``text_completion.chunk`` or ``chat.completions.chunk``, ids ``conv-<ns>`` or
``chatcmpl-<ns>``; no ``[DONE]``. Asked (``stream_options.include_usage``), as 4.x does:
``"usage": null`` in each chunk, then after the last a chunk with no choice and the usage;
otherwise no usage. With no model loaded it answers 200 and closes
the stream without a chunk (the scripted action ``empty_stream``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

SEP = b"\r\n"
EVENT_STREAM = "text/event-stream; charset=utf-8"


class StreamBroken(ConnectionResetError):
    """Raised by a stream that is scripted to break off (the server drops the connection)."""


def _chunk(
    cmpl_id: str, created: int, model: str, chat: bool, text: str, finish: str | None
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if chat:
        choice["delta"] = {"role": "assistant", "content": text}
    else:
        choice.update(text=text, logprobs=None)
    return {
        "id": cmpl_id,
        "object": "chat.completions.chunk" if chat else "text_completion.chunk",
        "created": created,
        "model": model,
        "choices": [choice],
    }


def event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + SEP + SEP


def pieces(text: str) -> list[str]:
    """The text as the server sends it: a word at a time, each after the first with its space."""
    words = text.split(" ")
    return [words[0], *(" " + word for word in words[1:])] if text else []


async def stream_events(
    text: str,
    finish_reason: str,
    *,
    model: str,
    chat: bool,
    interval_s: float,
    break_after: int | None = None,
    usage: dict[str, int] | None = None,
) -> AsyncIterator[bytes]:
    """The events of one streamed answer; with ``break_after``, only that many pieces and then
    :class:`StreamBroken`; with ``usage``, a last chunk that carries it."""
    now_ns = time.time_ns()
    cmpl_id = f"chatcmpl-{now_ns}" if chat else f"conv-{now_ns}"
    created = now_ns // 1_000_000_000

    def chunk(piece: str, finish: str | None = None) -> bytes:
        body = _chunk(cmpl_id, created, model, chat, piece, finish)
        if usage is not None:
            body["usage"] = None
        return event(body)

    yield chunk("")
    for index, piece in enumerate(pieces(text)):
        if break_after is not None and index >= break_after:
            raise StreamBroken("scripted: the stream breaks off")
        if interval_s > 0 and index > 0:
            await asyncio.sleep(interval_s)
        yield chunk(piece)
    if break_after is not None:
        raise StreamBroken("scripted: the stream breaks off")
    yield chunk("", finish_reason)
    if usage is not None:
        last = {**_chunk(cmpl_id, created, model, chat, "", None), "choices": [], "usage": usage}
        yield event(last)


async def no_events() -> AsyncIterator[bytes]:
    """A stream closed before its first event."""
    return
    yield b""  # a generator, for the type
