"""Reading tenants' usage: what each task's end counted (worker/delivery/scripts/task_end.lua).

A tenant's usage of a UTC day is one hash, ``genqueue:usage:<tenant>:<day>``, its fields named
``<endpoint>:<kind>``; the tenants with usage that day are a set beside it. Both are kept for
``GENQUEUE_USAGE_RETENTION_DAYS``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from worker import keys
from worker.contract import FINAL_STATES
from worker.endpoints.config import Endpoints

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
    #: ``gpu_seconds`` at the endpoint's ``usd_per_hour`` (``None``: it states no price).
    cost_usd: float | None = None


class UsageReport(BaseModel):
    """``GET /v1/usage``: rows by day, tenant and endpoint."""

    from_: date = Field(alias="from")
    to: date
    usage: list[UsageRow]


def days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def prices_of(endpoints: Endpoints | None) -> dict[str, float]:
    """Each endpoint's ``usd_per_hour``, for those that state one."""
    if endpoints is None:
        return {}
    specs = endpoints.specs.values()
    return {spec.name: spec.usd_per_hour for spec in specs if spec.usd_per_hour is not None}


def rows_of(
    tenant: str, day: date, raw: dict[bytes, bytes], prices: Mapping[str, float] | None = None
) -> list[UsageRow]:
    """The rows of one usage hash, one per endpoint, by endpoint name; each priced at its
    endpoint's ``usd_per_hour`` in ``prices``."""
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
    for endpoint, row in by_endpoint.items():
        price = (prices or {}).get(endpoint)
        if price is not None:
            row.cost_usd = round(row.gpu_seconds / 3600 * price, 6)
    return [by_endpoint[name] for name in sorted(by_endpoint)]


class UsageReader:
    """Reads usage rows from Redis.

    :param client: an asyncio Redis client on genqueue's Redis.
    :param prices: each endpoint's ``usd_per_hour`` (:func:`prices_of`).
    """

    def __init__(self, client: aioredis.Redis, prices: Mapping[str, float] | None = None) -> None:
        self._redis = client
        self._prices = dict(prices or {})

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
            rows += rows_of(tenant, day, raw, self._prices)
        return rows
