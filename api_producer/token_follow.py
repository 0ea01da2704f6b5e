"""Following a task's tokens: what ``GET /v1/tasks/{id}/stream`` sends, as it happens.

A streaming task's pieces are read from its token stream (see
:mod:`worker.delivery.token_stream`) with a blocking ``XREAD``, from the start or after the
``Last-Event-ID`` the client gives; a task still queued has no stream yet and is simply waited
for. The follow ends with the task's final status: at the stream's ``end`` mark, or when a
periodic look at the status finds it final (a task cancelled while queued, or an ``end`` mark
that Redis did not take). A task that does not stream (or that finished with no piece in its
stream) sends its whole text as one piece, id :data:`WHOLE_TEXT_ID`.

The follows of an API process use a Redis client of their own, as large as the most follows
allowed at once (``GENQUEUE_API_MAX_STREAMS``): a blocked ``XREAD`` holds its connection.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from api_producer.store import TaskStore
from api_producer.waiters import TooManyWaiters
from worker import keys
from worker.contract import TaskState, TaskStatus
from worker.delivery import records
from worker.delivery.token_stream import END, KIND, RESTART, TEXT, TOKEN

#: The id of the one piece of a task whose text did not stream.
WHOLE_TEXT_ID = "0-1"
#: A Last-Event-ID is a Redis stream entry id.
EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
#: How long one XREAD blocks before the status is looked at (a task ended without a mark).
BLOCK_MS = 1000
#: A keep-alive comment after this long without an event (proxies close idle streams).
KEEPALIVE_S = 15.0
ENTRIES_PER_READ = 512
#: How long the final status may lag the end mark (Celery stores a failure after the task).
END_WAIT_S = 10.0


class TooManyStreams(Exception):
    """Raised when this API process already follows its most streams."""


@dataclass(frozen=True)
class Piece:
    """A ``token`` (``text``) or a ``restart``, with its event id."""

    kind: str
    text: str
    event_id: str


class StreamSlot:
    """One follow's place among ``GENQUEUE_API_MAX_STREAMS``, freed once: by the follow's end,
    by whoever reserved it if the follow never runs, or when dropped unused (a response whose
    body was never read)."""

    def __init__(self, follower: TokenFollower) -> None:
        self._follower: TokenFollower | None = follower

    def release(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.streams -= 1

    def __del__(self) -> None:
        self.release()


#: What a follow yields: a piece, ``None`` for a keep-alive, and last the final status.
Event = Piece | TaskStatus | None


class TokenFollower:
    """The follows of one API process.

    :param client: an asyncio Redis client of its own (``max_streams`` connections).
    :param store: task statuses.
    :param max_streams: follows at once; more raise :class:`TooManyStreams`.
    """

    def __init__(self, client: aioredis.Redis, store: TaskStore, max_streams: int) -> None:
        self._redis = client
        self._store = store
        self.max_streams = max_streams
        self.streams = 0

    async def aclose(self) -> None:
        await self._redis.aclose()

    def reserve(self) -> StreamSlot:
        """A place among the follows, counted at once (the check and the count are one step:
        a burst cannot pass the check before its streams count); :class:`TooManyStreams` when
        this process follows its most streams already."""
        if self.streams >= self.max_streams:
            raise TooManyStreams(f"{self.streams} streams already followed by this API process")
        self.streams += 1
        return StreamSlot(self)

    async def follow(
        self, task_id: str, last_id: str | None, slot: StreamSlot | None = None
    ) -> AsyncGenerator[Event, None]:
        """The events of ``task_id`` after ``last_id`` (all of them when ``None``), then its
        final status, in ``slot`` (one reserved now if none), which it frees at its end."""
        slot = slot or self.reserve()
        try:
            if await self._streams(task_id):
                async for event in self._from_stream(task_id, last_id):
                    yield event
            else:
                async for event in self._whole(task_id, last_id):
                    yield event
        finally:
            slot.release()

    async def _streams(self, task_id: str) -> bool:
        """Whether the task streams: its request says so, or it has a token stream."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(keys.task_record(task_id), records.F_PAYLOAD)
        pipe.exists(keys.tokens(task_id))
        payload, exists = await pipe.execute()
        if exists:
            return True
        try:
            request = json.loads(payload) if payload else {}
        except ValueError:
            return False
        return isinstance(request, dict) and request.get("stream") is True

    async def _whole(self, task_id: str, last_id: str | None) -> AsyncIterator[Event]:
        while True:
            status = await self._store.get(task_id)
            if status is None or status.status.is_final:
                break
            yield None
            await self._changed(task_id)
        if status is not None:
            whole = _whole_text(status)
            if whole is not None and last_id is None:
                yield whole
            yield status

    async def _final(self, task_id: str) -> TaskStatus | None:
        """The status after the end mark: a failure is stored by Celery just after it."""
        deadline = time.monotonic() + END_WAIT_S
        while True:
            try:
                status = await self._store.wait(task_id, END_WAIT_S)
            except TooManyWaiters:
                await asyncio.sleep(0.05)
                status = await self._store.get(task_id)
            if status is None or status.status.is_final or time.monotonic() >= deadline:
                return status

    async def _changed(self, task_id: str) -> None:
        """Until the task changes, or a keep-alive is due."""
        try:
            await self._store.wait(task_id, KEEPALIVE_S)
        except TooManyWaiters:  # look again in a while
            await asyncio.sleep(BLOCK_MS / 1000)

    async def _from_stream(self, task_id: str, last_id: str | None) -> AsyncIterator[Event]:
        key = keys.tokens(task_id)
        cursor = last_id or "0-0"
        seen = last_id is not None
        quiet_since = time.monotonic()
        while True:
            answer: Any = await self._redis.xread(
                {key: cursor}, count=ENTRIES_PER_READ, block=BLOCK_MS
            )
            ended = False
            for entry_id, fields in answer[0][1] if answer else []:
                cursor = _text(entry_id)
                seen = True
                piece = _piece(cursor, fields)
                if piece is None:
                    ended = True
                    break
                quiet_since = time.monotonic()
                yield piece
            if answer and not ended:
                continue
            status = await self._final(task_id) if ended else await self._store.get(task_id)
            if status is None:
                return  # expired meanwhile
            if ended or status.status.is_final:
                async for event in self._rest(key, cursor, status, seen):
                    yield event
                return
            if time.monotonic() - quiet_since >= KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield None

    async def _rest(
        self, key: str, cursor: str, status: TaskStatus, seen: bool
    ) -> AsyncIterator[Event]:
        """What the stream holds after ``cursor`` (added before the end), then the status."""
        entries: list[Any] = await self._redis.xrange(key, min=f"({cursor}", max="+") or []
        for entry_id, fields in entries:
            piece = _piece(_text(entry_id), fields)
            if piece is None:
                break
            seen = True
            yield piece
        whole = _whole_text(status) if not seen else None
        if whole is not None:
            yield whole
        yield status


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _piece(entry_id: str, fields: dict[Any, Any]) -> Piece | None:
    """The piece of an entry; ``None`` for the end mark."""
    kind = _text(fields.get(KIND.encode(), b""))
    if kind == END:
        return None
    if kind == RESTART:
        return Piece(RESTART, "", entry_id)
    return Piece(TOKEN, _text(fields.get(TEXT.encode(), b"")), entry_id)


def _whole_text(status: TaskStatus) -> Piece | None:
    if status.status is TaskState.SUCCEEDED and status.result is not None and status.result.text:
        return Piece(TOKEN, status.result.text, WHOLE_TEXT_ID)
    return None
