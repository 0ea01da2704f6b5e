"""Bearer-key authentication, compared in constant time: a key names its tenant."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import HTTPException, Request, status
from fastapi.security import HTTPBearer

from worker.tenancy.tenants import ANONYMOUS, Tenant, Tenants, TenantsSource
from worker.tenancy.tenants import hash_key as hash_key
from worker.tenancy.tenants import parse_key_hash as parse_key_hash

#: The one security scheme of ``openapi.json``: ``Authorization: Bearer <key>`` (the page at
#: ``/docs`` offers it behind its Authorize button). A dependency of every keyed route
#: (:func:`api_producer.deps.authenticated`), so FastAPI lists it on each; it checks nothing
#: itself (:class:`KeyChecker` does).
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="a key of GENQUEUE_API_KEYS or of the tenants file",
)


class KeyChecker:
    """Accepts ``Authorization: Bearer <key>`` for any configured key; anyone if there are none.

    :param source: the tenants and their keys' SHA-256 digests (re-read when the tenants file
        changes), so a deployment need not hold the plain keys at all.

    Every digest is compared (with :func:`hmac.compare_digest`), so the time taken says nothing
    about which key, or how much of one, matched.
    """

    def __init__(self, source: TenantsSource) -> None:
        self._source = source

    @property
    def tenants(self) -> Tenants:
        return self._source.current()

    @property
    def enabled(self) -> bool:
        return self.tenants.keyed

    def tenant(self, name: str) -> Tenant:
        """The tenant ``name`` (with defaults if it is not configured). With no keys at all,
        the one anonymous caller reaches everything: there is no one to keep apart."""
        tenants = self.tenants
        if name == ANONYMOUS and not tenants.keyed:
            return Tenant(name=ANONYMOUS, admin=True)
        return tenants.get(name)

    def caller(self, authorization: str | None) -> str | None:
        """The name of the matching key's tenant, or ``None`` if none matches."""
        tenants = self.tenants
        if not tenants.keyed:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        offered = hashlib.sha256(token.strip().encode()).digest()
        matched: str | None = None
        for digest, name in tenants.by_digest.items():
            if hmac.compare_digest(digest, offered) and scheme.lower() == "bearer":
                matched = name
        return matched

    async def __call__(self, request: Request) -> str:
        caller = self.caller(request.headers.get("authorization"))
        if caller is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing or invalid API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return caller
