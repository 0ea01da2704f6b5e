"""API keys and the tenant names genqueue gives: a key's digest, the ``key-`` tenant a plain key
makes on its own (never shared by two keys), and the names the tenants file may not take."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from worker.errors import SettingsError
from worker.settings import env_name

#: The tenant of tasks that name none and came with no key.
INTERNAL = "internal"
#: The tenant of every caller when the API has no keys at all (nothing to tell callers apart).
ANONYMOUS = "anonymous"
#: Prefix of the tenant a plain key makes on its own.
KEY_TENANT_PREFIX = "key-"
#: The label unnamed tenants share in metrics (label values stay bounded).
OTHER_LABEL = "other"
#: Names the tenants file may not give (nor any starting :data:`KEY_TENANT_PREFIX`), any case.
RESERVED_NAMES = {
    INTERNAL: "tasks sent with no key",
    ANONYMOUS: "every caller of an API without keys",
    OTHER_LABEL: "the metrics label of unnamed tenants",
}
_SHA256_HEX_CHARS = 64


def key_tenant_name(digest: bytes) -> str:
    """The tenant a plain key makes on its own: ``key-`` + 8 hex digits of its digest."""
    return KEY_TENANT_PREFIX + digest.hex()[:8]


def key_tenant(key: str) -> str:
    """The tenant the plain key ``key`` makes on its own (when no tenants file names it)."""
    return key_tenant_name(hashlib.sha256(key.encode()).digest())


def hash_key(key: str) -> str:
    """The SHA-256 hex digest of ``key`` (a ``GENQUEUE_API_KEY_HASHES`` entry)."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key_hash(value: str, where: str = "GENQUEUE_API_KEY_HASHES") -> bytes:
    """A SHA-256 digest from its hex form; :class:`SettingsError` naming ``where`` if not one."""
    text = value.strip().lower()
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        digest = b""
    if len(text) != _SHA256_HEX_CHARS or len(digest) * 2 != _SHA256_HEX_CHARS:
        # Never echo the value: an operator may have pasted a plain key here by mistake.
        raise SettingsError(f"{where}: each entry must be a SHA-256 digest, 64 hex characters")
    return digest


def check_key_tenants(by_digest: Mapping[bytes, str]) -> None:
    """Two keys never share a ``key-`` tenant: 8 hex digits can collide (one pair in about
    65,000 keys), and two services would then read and cancel each other's tasks."""
    seen: dict[str, bytes] = {}
    for digest, name in by_digest.items():
        if name.startswith(KEY_TENANT_PREFIX) and seen.setdefault(name, digest) != digest:
            raise SettingsError(
                f"{env_name('api_keys')} / {env_name('api_key_hashes')}: two keys make the same "
                f"tenant {name} (their SHA-256 digests share the first 8 hex digits); replace "
                "one of them, or name each in the tenants file"
            )


def reserved_name(name: str) -> str | None:
    """Why ``name`` may not be a tenants file's tenant (``None`` if it may): genqueue gives
    these names itself, and a tenant named so would own others' tasks."""
    folded = name.lower()
    if folded in RESERVED_NAMES:
        return f"the name {folded!r} is genqueue's own ({RESERVED_NAMES[folded]})"
    if folded.startswith(KEY_TENANT_PREFIX):
        return f"names starting {KEY_TENANT_PREFIX!r} are the tenants of plain keys"
    return None
