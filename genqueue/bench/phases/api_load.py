"""The API load generator: keep-alive connections posting tasks as fast as they are answered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from genqueue.bench.figures import percentile
from genqueue.bench.workers import REQUEST

API_KEY = "genqueue-bench-key"


def _post_bytes(port: int) -> bytes:
    body = json.dumps(REQUEST).encode()
    head = (
        f"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_status(reader: asyncio.StreamReader) -> int:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return int(head[0].split(" ", 2)[1])


async def _api_client(port: int, deadline: float, samples: list[float], errors: list[str]) -> None:
    """One keep-alive connection posting one task after another until ``deadline``."""
    payload = _post_bytes(port)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as err:
        errors.append(type(err).__name__)
        return
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(payload)
            status = await _read_status(reader)
            if status == 202:
                samples.append(time.perf_counter() - started)
            else:
                errors.append(str(status))
    except (OSError, asyncio.IncompleteReadError, ValueError) as err:
        errors.append(type(err).__name__)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def api_load(port: int, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` connections posting to ``/v1/tasks`` for ``seconds``: rate and latency."""
    samples: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    await asyncio.gather(
        *(_api_client(port, started + seconds, samples, errors) for _ in range(clients))
    )
    elapsed = time.perf_counter() - started
    return {
        "requests": len(samples),
        "errors": len(errors),
        "requests_per_s": len(samples) / elapsed,
        "p50_ms": percentile(samples, 50) * 1000 if samples else None,
        "p99_ms": percentile(samples, 99) * 1000 if samples else None,
    }
