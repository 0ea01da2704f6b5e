"""A per-tenant submission limit, counted in Redis so every API process shares it.

A fixed one-minute window per tenant: ``genqueue:rate:<tenant>:<window>`` holds the tasks
the tenant submitted in that minute and expires soon after it. The limit is the tenant's
``requests_per_minute`` (tenants file), else ``GENQUEUE_API_RATE_LIMIT_PER_MINUTE``. A batch
counts as its length, charged as its lines arrive, before they are parsed; a batch refused for
any reason is refunded. A submission that would pass the limit is refused whole (429 with
``Retry-After``) and counts for nothing. A fixed window lets a caller reach twice the limit
across a window edge at most; the point is to bound GPU work per tenant, not to shape traffic.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, HTTPException, Request, status

from api_producer import script_replies
from api_producer.deps import CallerDep, StateDep
from worker import keys, lua
from worker.redis_io import connections
from worker.settings import Settings
from worker.tenancy.tenants import Tenant

WINDOW_S = 60
#: Keys outlive their window a little, so a slow clock on one API process still finds them.
KEY_TTL_S = 2 * WINDOW_S


class RateLimiter:
    """Counts submissions per caller and refuses those over ``per_minute``.

    :param client: an asyncio Redis client on genqueue's Redis; ``None`` when disabled.
    :param per_minute: tasks a caller may submit per window; 0 turns the limit off.
    :param clock: seconds since the epoch (tests pass their own).
    """

    def __init__(
        self,
        client: aioredis.Redis | None,
        per_minute: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._per_minute = per_minute
        self._clock = clock
        self._script: lua.Named | None = None
        self._refund: lua.Named | None = None
        if client is not None:
            self._script = lua.named(client, "api_producer", "rate_charge")
            self._refund = lua.named(client, "api_producer", "rate_refund")

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        limit = settings.api_rate_limit_per_minute
        if limit <= 0 and settings.tenants_file is None:
            return cls(None, 0)
        client = connections.api_async_client(settings, max_connections=256)
        return cls(client, limit)

    def limit_for(self, tenant: Tenant) -> int:
        """The tenant's own limit if the tenants file gives one, else the global one."""
        if tenant.requests_per_minute is not None:
            return tenant.requests_per_minute
        return self._per_minute

    async def charge(self, caller: Tenant, cost: int, before: int = 0) -> int | None:
        """Count ``cost`` submissions for ``caller``; :class:`HTTPException` 429 if over.

        ``before`` is what the same submission was charged already (a batch charged a piece
        at a time). Returns the window charged, ``None`` when the limit is off.
        """
        per_minute = self.limit_for(caller)
        if self._script is None or per_minute <= 0:
            return None
        if before + cost > per_minute:
            size = f"{before + cost} or more" if before else str(cost)
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=f"a batch of {size} is more than the {per_minute} tasks per minute "
                "this tenant may submit: split it",
            )
        now = self._clock()
        window = int(now // WINDOW_S)
        charge = script_replies.rate_charge(
            await self._script(
                keys={"window_key": keys.api_rate(caller.name, window)},
                args={"cost": cost, "limit": per_minute, "key_ttl_s": KEY_TTL_S},
            )
        )
        if charge.refused:
            retry_after_s = max(1, math.ceil((window + 1) * WINDOW_S - now))
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                detail=f"rate limit: at most {per_minute} tasks per minute for this tenant; "
                f"retry in {retry_after_s}s",
                headers={"Retry-After": str(retry_after_s)},
            )
        return window

    async def refund(self, caller: str, window: int, cost: int) -> None:
        """Give back ``cost`` charged to ``caller`` in ``window``."""
        if self._refund is not None and cost > 0:
            await self._refund(
                keys={"window_key": keys.api_rate(caller, window)}, args={"cost": cost}
            )

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


class Charge:
    """The current caller's limit: ``await charge(n)`` before enqueueing ``n`` tasks.

    Several calls add up (a batch charged a piece at a time); :meth:`refund` gives all of it
    back when the submission is refused after all.
    """

    def __init__(self, limiter: RateLimiter, caller: Tenant) -> None:
        self._limiter = limiter
        self._caller = caller
        self._charged: dict[int, int] = {}

    @property
    def total(self) -> int:
        return sum(self._charged.values())

    async def __call__(self, cost: int) -> None:
        window = await self._limiter.charge(self._caller, cost, before=self.total)
        if window is not None:
            self._charged[window] = self._charged.get(window, 0) + cost

    async def refund(self) -> None:
        """Give back everything this submission was charged."""
        charged, self._charged = self._charged, {}
        for window, cost in charged.items():
            await self._limiter.refund(self._caller.name, window, cost)


def get_rate_limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.rate_limiter
    return limiter


async def rate_limit(request: Request, caller: CallerDep, state: StateDep) -> Charge:
    """The caller's :class:`Charge`; every route that submits takes one, so a suspended tenant
    (a limit of 0 in the tenants file: 0 means none) is refused here, 403, whatever the
    global limit. It still reads and cancels its own tasks."""
    tenant = state.keys.tenant(caller)
    if tenant.suspended_by is not None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"this tenant is suspended ({tenant.suspended_by} = 0 in the tenants file): "
            "it may not submit tasks",
        )
    return Charge(get_rate_limiter(request), tenant)


RateLimitDep = Annotated[Charge, Depends(rate_limit)]
