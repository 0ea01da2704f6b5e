"""Helpers for tests of genqueue's Redis clients."""

from __future__ import annotations

import asyncio

from worker.redis_io import connections
from worker.settings import Settings


def ping_async(settings: Settings) -> None:
    """PING through a new asyncio client made as genqueue makes them (raises what it raises)."""

    async def ping() -> None:
        client = connections.async_client(settings)
        try:
            await client.ping()
        finally:
            await client.aclose()

    asyncio.run(ping())
