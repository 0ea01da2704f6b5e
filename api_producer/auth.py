"""Bearer-key authentication, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from fastapi import HTTPException, Request, status

from worker.errors import SettingsError

_SHA256_HEX_CHARS = 64


class KeyChecker:
    """Accepts ``Authorization: Bearer <key>`` for any configured key; anyone if there are none.

    :param keys: plain keys (``GENQUEUE_API_KEYS``).
    :param key_hashes: SHA-256 hex digests of keys (``GENQUEUE_API_KEY_HASHES``), so a
        deployment need not hold the plain keys at all.

    Only digests are kept. Every one is compared (with :func:`hmac.compare_digest`), so the time
    taken says nothing about which key, or how much of one, matched.
    """

    def __init__(self, keys: Sequence[str], key_hashes: Sequence[str] = ()) -> None:
        digests = [hashlib.sha256(key.encode()).digest() for key in keys]
        digests += [parse_key_hash(value) for value in key_hashes]
        self._digests = list(dict.fromkeys(digests))

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


def hash_key(key: str) -> str:
    """The ``GENQUEUE_API_KEY_HASHES`` entry for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key_hash(value: str) -> bytes:
    """A SHA-256 digest from its hex form; :class:`SettingsError` if it is not one."""
    text = value.strip().lower()
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        digest = b""
    if len(text) != _SHA256_HEX_CHARS or len(digest) * 2 != _SHA256_HEX_CHARS:
        # Never echo the value: an operator may have pasted a plain key here by mistake.
        raise SettingsError(
            "GENQUEUE_API_KEY_HASHES: each entry must be a SHA-256 digest, 64 hex characters"
        )
    return digest
