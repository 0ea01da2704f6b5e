"""Reading a streamed completion: OpenAI-style server-sent events, piece by piece.

text-generation-webui, vLLM and llama.cpp's server answer ``stream: true`` with ``data: {...}``
events (a completion chunk each: ``choices[0].text``, or ``choices[0].delta.content`` for chat)
and, for most, a last ``data: [DONE]``; asked (``stream_options.include_usage``), a last chunk
with the usage and no choice. Each piece of text goes to ``on_piece`` as it arrives;
the whole answer comes back as the same :class:`~worker.contract.GenerationResult` a
non-streaming call gives.

The body is read with the byte cap of a non-streamed answer (see
:mod:`worker.endpoints.answers`): a stream over it is an error, never a worker holding it all.
A stream is complete at ``[DONE]`` or at a chunk with a ``finish_reason`` (text-generation-webui
sends no ``[DONE]``); one that ends before either broke (another attempt may get past it), and
one that ends without a single chunk (text-generation-webui with no model loaded answers 200 and
closes at once) is an error too, never an empty success.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import requests
from urllib3.exceptions import DecodeError, ProtocolError, ReadTimeoutError

from worker.contract import GenerationResult, Usage, estimate_tokens
from worker.endpoints.answers import CHUNK_BYTES
from worker.endpoints.disclosure import EndpointVoice
from worker.errors import (
    ConnectionDropped,
    EndpointError,
    InvalidEndpointResponse,
    RetryableEndpointError,
)

#: Called with each piece of text as it arrives.
PieceSink = Callable[[str], None]
#: :func:`worker.endpoints.classify.classify_response`: status, headers, body, voice.
Classifier = Callable[[int, Any, str, EndpointVoice], EndpointError | None]
DONE = "[DONE]"


class EmptyStream(RetryableEndpointError):
    """The endpoint answered 200 and closed the stream without a single event (no model
    loaded, for text-generation-webui): unavailable now, perhaps not on the next attempt."""


@dataclass
class _Answer:
    """What the chunks said so far."""

    pieces: list[str] = field(default_factory=list)
    chunks: int = 0
    finish_reason: str | None = None
    model: str | None = None
    usage: Usage | None = None
    done: bool = False


def stream_events(raw: Iterator[bytes]) -> Iterator[str]:
    """The ``data`` of each server-sent event in ``raw`` (the body's bytes, as they come).

    Lines end with ``\\n``, ``\\r\\n`` or ``\\r``; comments (``:``, keep-alive pings) and
    other fields (``event:``, ``id:``) are skipped; several ``data:`` lines of one event are
    joined with ``\\n``, as the SSE specification says.
    """
    buffer = b""
    data: list[str] = []
    for chunk in raw:
        buffer += chunk
        lines = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        if buffer.endswith(b"\r"):
            lines[-2:] = [lines[-2] + b"\r"]  # perhaps the first half of a \r\n
        buffer = lines.pop()
        for line in lines:
            text = line.decode("utf-8", errors="replace")
            if not text:
                if data:
                    yield "\n".join(data)
                data = []
            elif text.startswith("data:"):
                data.append(text[5:].removeprefix(" "))
    if buffer.strip().startswith(b"data:"):
        data.append(buffer.decode("utf-8", errors="replace").strip()[5:].lstrip())
    if data:
        yield "\n".join(data)


def _capped(
    response: requests.Response, limit_bytes: int, deadline: float, too_large: str
) -> Iterator[bytes]:
    """The body's bytes as they arrive (each read returns what is there), up to the cap."""
    size = 0
    while True:
        try:
            chunk = response.raw.read1(CHUNK_BYTES, decode_content=True)
        except ReadTimeoutError as err:  # as requests' own iter_content would name them
            raise requests.ReadTimeout(err) from None
        except ProtocolError as err:
            raise requests.exceptions.ChunkedEncodingError(err) from None
        except DecodeError as err:
            raise requests.exceptions.ContentDecodingError(err) from None
        if not chunk:
            return
        size += len(chunk)
        if size > limit_bytes:
            raise InvalidEndpointResponse(too_large)
        if time.monotonic() > deadline:
            raise requests.ReadTimeout("the stream took longer than the read timeout")
        yield chunk


def _take(
    answer: _Answer, data: str, voice: EndpointVoice, on_piece: PieceSink, classify: Classifier
) -> None:
    """Fold one event's data into ``answer``; raise for an error event or a stranger."""
    if data.strip() == DONE:
        answer.done = True
        return
    try:
        chunk = json.loads(data)
    except ValueError:
        raise InvalidEndpointResponse(voice.says(" streamed an event that is not JSON")) from None
    if not isinstance(chunk, dict):
        raise InvalidEndpointResponse(voice.says(" streamed an event that is not a chunk"))
    if "error" in chunk:
        raise stream_error(chunk, voice, classify)
    answer.chunks += 1
    if isinstance(chunk.get("model"), str):
        answer.model = chunk["model"]
    if isinstance(chunk.get("usage"), dict):
        answer.usage = Usage.model_validate(chunk["usage"])
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return  # a usage-only chunk (stream_options.include_usage), or a role-only one
    choice = choices[0]
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    if isinstance(text, str) and text:
        answer.pieces.append(text)
        on_piece(text)
    if choice.get("finish_reason"):
        answer.finish_reason = str(choice["finish_reason"])


def stream_error(
    chunk: dict[str, Any], voice: EndpointVoice, classify: Classifier
) -> EndpointError:
    """An ``{"error": ...}`` event, classified like an error answer of its status (500 when
    it names none) by the one classifier."""
    error = chunk.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    classified = classify(status, {}, json.dumps(chunk), voice)
    assert classified is not None
    return classified


def read_stream(
    response: requests.Response,
    limit_bytes: int,
    deadline: float,
    voice: EndpointVoice,
    on_piece: PieceSink,
    classify: Classifier,
    started: float,
    prompt_chars: int = 0,
) -> GenerationResult:
    """The result of a streamed 2xx answer, each piece handed to ``on_piece`` on arrival.

    :raises EndpointError: an error event, a stream over ``limit_bytes``, a stream that broke
        off or never began.
    :raises requests.RequestException: the connection failed while the stream was read.
    :param started: the call's :func:`time.perf_counter` start, for ``latency_ms``.
    :param prompt_chars: the prompt's length, estimated in tokens when the server streams no
        usage.
    """
    too_large = voice.says(
        f" streamed more than {limit_bytes} bytes, the most genqueue reads for this request "
        "(GENQUEUE_ENDPOINT_MAX_RESPONSE_BYTES and max_tokens set it)"
    )
    answer = _Answer()
    complete = False
    try:
        for data in stream_events(_capped(response, limit_bytes, deadline, too_large)):
            _take(answer, data, voice, on_piece, classify)
            if answer.done:
                break
        complete = True
    finally:
        if not complete or not answer.done:
            response.close()  # unread or broken: not for the next call
    return _result(answer, voice, int((time.perf_counter() - started) * 1000), prompt_chars)


def _result(
    answer: _Answer, voice: EndpointVoice, latency_ms: int, prompt_chars: int
) -> GenerationResult:
    if answer.chunks == 0:
        raise EmptyStream(
            voice.says(" answered 200 and closed the stream without a chunk (is a model loaded?)")
        )
    if not answer.done and answer.finish_reason is None:
        raise ConnectionDropped(voice.says(": the stream ended before its last chunk"))
    # Without the server's count (a server that streams none, such as llama-cpp-python), the
    # prompt is estimated as the API's token budget estimates it, and each piece is a token:
    # the servers send one a chunk.
    usage = answer.usage
    if usage is None:
        prompt_tokens = estimate_tokens(prompt_chars)
        completion_tokens = len(answer.pieces)
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
    return GenerationResult(
        text="".join(answer.pieces),
        finish_reason=answer.finish_reason,
        model=answer.model,
        usage=usage,
        latency_ms=latency_ms,
    )


def is_event_stream(response: requests.Response) -> bool:
    """A 2xx answer in server-sent events (a server may ignore ``stream`` and answer JSON)."""
    content_type = response.headers.get("content-type", "")
    return 200 <= response.status_code < 300 and "text/event-stream" in content_type
