"""Reading tenants' usage: what each task's end counted (worker/delivery/scripts/task_end.lua).

A tenant's usage of a UTC day is one hash, ``genqueue:usage:<tenant>:<day>``, its fields named
``<endpoint>:<kind>``; the tenants with usage that day are a set beside it. Both are kept for
``GENQUEUE_USAGE_RETENTION_DAYS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from worker import keys
from worker.contract import FINAL_STATES

OUTCOMES = tuple(sorted(state.value for state in FINAL_STATES))
_MS_PER_S = 1000


class UsageRow(BaseModel):
    """One tenant's use of one endpoint on one UTC day."""

    tenant: str
    date: date
    endpoint: str
    #: Tasks by outcome: succeeded, failed, cancelled.
    tasks: dict[str, int]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: The durations of the endpoint calls that gave the results, in seconds.
    gpu_seconds: float = 0.0


class UsageReport(BaseModel):
    """``GET /v1/usage``: rows by day, tenant and endpoint."""

    from_: date = Field(alias="from")
    to: date
    usage: list[UsageRow]


def days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def rows_of(tenant: str, day: date, raw: dict[bytes, bytes]) -> list[UsageRow]:
    """The rows of one usage hash, one per endpoint, by endpoint name."""
    by_endpoint: dict[str, UsageRow] = {}
    for raw_field, raw_value in raw.items():
        endpoint, sep, kind = raw_field.decode().rpartition(":")
        if not sep:
            continue  # total_tokens: the day's sum, for the token budget
        row = by_endpoint.setdefault(
            endpoint,
            UsageRow(tenant=tenant, date=day, endpoint=endpoint, tasks=dict.fromkeys(OUTCOMES, 0)),
        )
        value = int(raw_value)
        if kind in row.tasks:
            row.tasks[kind] = value
        elif kind == "prompt_tokens":
            row.prompt_tokens = value
        elif kind == "completion_tokens":
            row.completion_tokens = value
        elif kind == "gpu_ms":
            row.gpu_seconds = value / _MS_PER_S
    return [by_endpoint[name] for name in sorted(by_endpoint)]


class UsageReader:
    """Reads usage rows from Redis.

    :param client: an asyncio Redis client on genqueue's Redis.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client

    async def tenants_between(self, first: date, last: date) -> list[str]:
        """Every tenant with usage on a day from ``first`` to ``last``."""
        pipe = self._redis.pipeline(transaction=False)
        for day in days(first, last):
            pipe.smembers(keys.usage_tenants(day.isoformat()))
        found: set[str] = set()
        for members in await pipe.execute():
            found.update(member.decode() for member in members)
        return sorted(found)

    async def rows(self, tenants: Sequence[str], first: date, last: date) -> list[UsageRow]:
        """The rows of ``tenants`` from ``first`` to ``last``, by day, tenant and endpoint."""
        asked = [(day, tenant) for day in days(first, last) for tenant in tenants]
        pipe = self._redis.pipeline(transaction=False)
        for day, tenant in asked:
            pipe.hgetall(keys.usage(tenant, day.isoformat()))
        rows: list[UsageRow] = []
        for (day, tenant), raw in zip(asked, await pipe.execute(), strict=True):
            rows += rows_of(tenant, day, raw)
        return rows
