"""Bearer-key authentication, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from fastapi import HTTPException, Request, status


class KeyChecker:
    """Accepts ``Authorization: Bearer <key>`` for any of ``keys``; all keys if ``keys`` is empty.

    Every configured key is compared (with :func:`hmac.compare_digest` on SHA-256 digests), so
    the time taken says nothing about which key, or how much of one, matched.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        self._digests = [hashlib.sha256(key.encode()).digest() for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def caller(self, authorization: str | None) -> str | None:
        """A stable, secret-free id of the matching key, or ``None`` if none matches."""
        if not self._digests:
            return "anonymous"
        scheme, _, token = (authorization or "").partition(" ")
        offered = hashlib.sha256(token.strip().encode()).digest()
        matched: bytes | None = None
        for digest in self._digests:
            if hmac.compare_digest(digest, offered) and scheme.lower() == "bearer":
                matched = digest
        return matched.hex()[:12] if matched is not None else None

    async def __call__(self, request: Request) -> str:
        caller = self.caller(request.headers.get("authorization"))
        if caller is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing or invalid API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return caller
