"""A request body size limit as ASGI middleware: 413 before the body is read past the limit."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised while reading a body (chunked, say) that grows past the limit.

    An ``HTTPException``, so FastAPI's body parsing lets it through as a 413.
    """

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, detail=f"request body is larger than {max_bytes} bytes")


class BodySizeLimit:
    """Refuse bodies over ``max_bytes``, or over ``path_limits[path]`` on those paths.

    :param max_bytes: the limit of every route not named in ``path_limits``.
    :param path_limits: per-path limits (``{"/v1/batches": 64 MiB}``), matched exactly.
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope["path"].rstrip("/"), self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        # Refused at the first read, not here: a route checks the caller's key before it reads
        # the body, so a request without a key is 401 whatever its size.
        too_large = declared is not None and declared.isdigit() and int(declared) > max_bytes
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            if too_large:
                raise BodyTooLarge(max_bytes)  # before a byte of it is read
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise BodyTooLarge(max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, max_bytes)

    async def _refuse(self, send: Send, max_bytes: int) -> None:
        body = json.dumps({"detail": f"request body is larger than {max_bytes} bytes"}).encode()
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
