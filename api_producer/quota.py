"""A tenant's token budget per UTC day (``tokens_per_day`` in the tenants file).

A submission holds its estimate, the prompt's length in tokens (about four characters a token)
plus its ``max_tokens``, against the day's budget before anything is enqueued; each task's
record keeps what it held, and its end (worker/delivery/scripts/task_end.lua) counts the real
tokens and gives the hold back. Tokens count on the day a task ends, so the day before's holds
(tasks not ended yet) count against today's budget too: a budget is never spent twice across
midnight. A submission that would pass the budget is refused whole with
:class:`QuotaExceeded` (429, ``Retry-After`` until the next UTC midnight). A batch is checked
as a whole.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import redis.asyncio as aioredis

from api_producer import script_replies
from api_producer.producers.enqueue import Reservation
from worker import contract, keys, lua
from worker.contract import GenerationRequest, request_tokens_estimate
from worker.errors import GenQueueError
from worker.settings import DAY_S
from worker.tenancy.tenants import Tenant

#: Holdings outlive their day: a task may end the next day and give its hold back then.
RESERVED_TTL_S = 2 * DAY_S
#: Characters per token in the prompt's estimate (the usual rule of thumb for English).
CHARS_PER_TOKEN = contract.CHARS_PER_TOKEN


class QuotaExceeded(GenQueueError):
    """Raised when a submission would pass its tenant's ``tokens_per_day``; nothing enqueued."""

    error_type = "quota_exceeded"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def estimate(request: GenerationRequest, default_max_tokens: int) -> int:
    """The tokens a request may spend at most, as far as the API can tell before it runs."""
    return request_tokens_estimate(request, default_max_tokens)


def utc_day(now_s: float) -> str:
    return datetime.fromtimestamp(now_s, UTC).date().isoformat()


def seconds_to_midnight(now_s: float) -> int:
    """Whole seconds until the next UTC day begins (at least 1)."""
    return max(1, math.ceil(DAY_S - now_s % DAY_S))


class TokenBudget:
    """Holds submissions' estimates against their tenants' day budgets.

    :param client: an asyncio Redis client on genqueue's Redis.
    :param default_max_tokens: the ``max_tokens`` of a request that gives none.
    :param clock: seconds since the epoch (tests pass their own).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        default_max_tokens: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._default_max_tokens = default_max_tokens
        #: Seconds since the epoch: the day a hold counts against.
        self.clock = clock
        self._reserve = lua.named(client, "api_producer", "token_reserve")

    async def reserve(
        self, tenant: Tenant, requests: Sequence[GenerationRequest]
    ) -> Reservation | None:
        """Hold the requests' estimates; ``None`` for a tenant without a budget."""
        budget = tenant.tokens_per_day
        if budget is None:
            return None
        now = self.clock()
        day = utc_day(now)
        tokens = [estimate(request, self._default_max_tokens) for request in requests]
        hold = script_replies.token_reserve(
            await self._reserve(
                keys={
                    "usage_key": keys.usage(tenant.name, day),
                    "reserved_key": keys.reserved_tokens(tenant.name),
                },
                args={
                    "day": day,
                    "cost": sum(tokens),
                    "budget": budget,
                    "key_ttl_s": RESERVED_TTL_S,
                    "day_before": utc_day(now - DAY_S),
                },
            )
        )
        if not hold.held:
            retry_after_s = seconds_to_midnight(now)
            raise QuotaExceeded(
                f"token quota: this submission may use up to {sum(tokens)} tokens and "
                f"{hold.used} of this tenant's {budget} tokens per day (UTC) are used or held; "
                f"the budget resets in {retry_after_s}s",
                retry_after_s,
            )
        return Reservation(day=day, tokens=tokens)

    async def release(
        self, tenant: Tenant, reservation: Reservation | None, first: int = 0
    ) -> None:
        """Give back the holds of the tasks from ``first`` on (their submission was refused)."""
        if reservation is None:
            return
        tokens = sum(reservation.tokens[first:])
        if tokens > 0:
            await self._redis.hincrby(keys.reserved_tokens(tenant.name), reservation.day, -tokens)
