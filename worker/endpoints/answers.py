"""Reading an endpoint's answer with a byte cap, whatever it declares or compresses.

A body is read in decoded chunks (urllib3 decompresses ``gzip``, ``deflate``, ``br`` and ``zstd``
at most one chunk at a time), counted as it comes, and given up on at the cap: a 64 MiB answer
or a gzip bomb costs the worker one chunk beyond the cap, never the whole thing. A connection
whose answer was not read to its end is closed, never handed to the next call.

The cap of a completion follows what was asked for: :data:`RESPONSE_OVERHEAD_BYTES` plus
:data:`RESPONSE_BYTES_PER_TOKEN` per token of ``max_tokens`` (the contract's largest when the
request sets none), never more than the operator's ceiling
(``GENQUEUE_ENDPOINT_MAX_RESPONSE_BYTES``). Error answers are read up to
:data:`ERROR_BODY_MAX_BYTES`: only their first words are kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import requests

from worker.contract import MAX_TOKENS_LIMIT
from worker.settings import default_of

#: Room for everything in a completion but its text: ids, usage, the model's name, headers.
RESPONSE_OVERHEAD_BYTES = 64 * 1024
#: Generous: a token is a few characters, but JSON escapes (``\uXXXX``) and per-token
#: ``logprobs`` multiply them.
RESPONSE_BYTES_PER_TOKEN = 1024
#: How much of an error answer (a 500 page, a job status) is read.
ERROR_BODY_MAX_BYTES = 64 * 1024
#: The default ceiling of any answer (``GENQUEUE_ENDPOINT_MAX_RESPONSE_BYTES``).
DEFAULT_MAX_RESPONSE_BYTES: int = default_of("endpoint_max_response_bytes")
CHUNK_BYTES = 64 * 1024


def response_limit_bytes(max_tokens: int | None, ceiling_bytes: int) -> int:
    """The most a completion of ``max_tokens`` tokens may take, at most ``ceiling_bytes``."""
    tokens = max_tokens if max_tokens is not None else MAX_TOKENS_LIMIT
    return min(ceiling_bytes, RESPONSE_OVERHEAD_BYTES + RESPONSE_BYTES_PER_TOKEN * tokens)


@dataclass(frozen=True)
class Body:
    """An answer's body as read: all of it, or its first ``limit`` bytes (``complete`` false)."""

    data: bytes
    complete: bool

    def text(self, encoding: str | None = None) -> str:
        try:
            return self.data.decode(encoding or "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know
            return self.data.decode("utf-8", errors="replace")


def read_body(response: requests.Response, limit_bytes: int, deadline: float | None = None) -> Body:
    """Read ``response`` (sent with ``stream=True``) up to ``limit_bytes`` decoded bytes.

    :param deadline: a :func:`time.monotonic` time; a body still coming then raises
        :class:`requests.ReadTimeout` (the read timeout bounds each read, not their sum).
    :raises requests.RequestException: as ``iter_content`` does (a broken connection, a body
        that does not decompress).
    """
    chunks: list[bytes] = []
    size = 0
    complete = False
    try:
        for chunk in response.iter_content(CHUNK_BYTES):
            size += len(chunk)
            if size > limit_bytes:
                chunks.append(chunk[: len(chunk) - (size - limit_bytes)])
                return Body(b"".join(chunks), complete=False)
            chunks.append(chunk)
            if deadline is not None and time.monotonic() > deadline:
                raise requests.ReadTimeout("the answer took longer than the read timeout")
        complete = True
    finally:
        if not complete:
            response.close()  # the rest is unread: the connection cannot serve another call
    return Body(b"".join(chunks), complete=True)
