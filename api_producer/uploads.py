"""A cap on the batch uploads one API process reads at a time.

An upload holds its validated requests in memory until they are enqueued, so each one in
flight costs memory; past ``GENQUEUE_BATCH_MAX_CONCURRENT_UPLOADS`` the next is answered
``503`` with ``Retry-After`` before its body is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import HTTPException, status

#: What a refused upload is told to wait, in seconds.
RETRY_AFTER_S = 5


class UploadSlots:
    """At most ``limit`` uploads at once in this process (an event loop's counter, no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the block; :class:`HTTPException` 503 when none is free."""
        if self.in_use >= self.limit:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"this API process is already reading {self.limit} batch uploads "
                f"(GENQUEUE_BATCH_MAX_CONCURRENT_UPLOADS); retry in {RETRY_AFTER_S}s",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self.in_use += 1
        try:
            yield
        finally:
            self.in_use -= 1
