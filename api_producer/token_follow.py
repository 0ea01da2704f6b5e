"""Following a task's tokens: what ``GET /v1/tasks/{id}/stream`` sends, as it happens.

A streaming task's pieces are read from its token stream (see
:mod:`worker.delivery.token_stream`) with a blocking ``XREAD``, from the start or after the
``Last-Event-ID`` the client gives; a task still queued has no stream yet and is simply waited
for. The follow ends with the task's final status: at the stream's ``end`` mark, or when a
periodic look at the status finds it final (a task cancelled while queued, or an ``end`` mark
that Redis did not take). A task that does not stream (or that finished with no piece in its
stream) sends its whole text as one piece, id :data:`WHOLE_TEXT_ID`.

A stream's cap trims its oldest entries: a follow whose next entry is not the one after the
last it read (each entry's place says, see :mod:`worker.delivery.token_stream`) has lost text.
It then sends ``restart`` if it had sent text, waits for the task's end and sends the whole
text as one piece (with the id of the stream's last entry), then the status. A task whose
record expires while it is followed ends the follow with :class:`Expired`.

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
from worker.delivery.token_stream import END, KIND, PLACE, RESTART, TEXT, TOKEN

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
#: How often a queued task's place is looked at (and sent, when it changed).
QUEUED_EVERY_S = 1.0


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


@dataclass(frozen=True)
class Expired:
    """The task's record and result are gone (retention ran out) while it was followed."""

    task_id: str

    @property
    def message(self) -> str:
        return f"task {self.task_id} expired while followed (GENQUEUE_RESULT_TTL_S passed)"


@dataclass(frozen=True)
class Queued:
    """The task waits: its place in the queue (``event: queued``), sent when it changes."""

    queue_position: int | None
    estimated_start_s: float | None


#: What a follow yields: a piece, ``None`` for a keep-alive, :class:`Queued` while the task
#: waits (when asked for), and last the final status (or :class:`Expired`).
Event = Piece | Queued | TaskStatus | Expired | None


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
        self,
        task_id: str,
        last_id: str | None,
        slot: StreamSlot | None = None,
        queued: bool = False,
    ) -> AsyncGenerator[Event, None]:
        """The events of ``task_id`` after ``last_id`` (all of them when ``None``), then its
        final status, in ``slot`` (one reserved now if none), which it frees at its end.

        ``queued``: while the task waits, its place (:class:`Queued`) when it changes, looked
        at every :data:`QUEUED_EVERY_S`.
        """
        slot = slot or self.reserve()
        try:
            if await self._streams(task_id):
                events = self._from_stream(task_id, last_id)
            else:
                events = self._whole(task_id, last_id)
            sent = await self._place_first(task_id) if queued else None
            if sent is not None:
                yield sent
            async for event in events:
                if isinstance(event, Queued):
                    if not queued or event == sent:
                        continue
                    sent = event
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
        async for event in self._until_final(task_id):
            if isinstance(event, TaskStatus):
                whole = _whole_text(event)
                if whole is not None and last_id is None:
                    yield whole
            yield event

    async def _until_final(
        self, task_id: str
    ) -> AsyncIterator[TaskStatus | Queued | Expired | None]:
        """Keep-alives (and its place while queued) until the task is final, then its status
        (:class:`Expired`: gone)."""
        alive_at = 0.0
        while True:
            status = await self._store.get(task_id)
            if status is None:
                yield Expired(task_id)
                return
            if status.status.is_final:
                yield status
                return
            if status.status is TaskState.QUEUED:
                yield _queued(status)
                await self._changed(task_id, QUEUED_EVERY_S)
                continue
            if time.monotonic() - alive_at >= KEEPALIVE_S:
                alive_at = time.monotonic()
                yield None
            await self._changed(task_id)

    async def _after_trim(self, task_id: str, key: str, seen: bool) -> AsyncIterator[Event]:
        """The follow of a stream that lost text to its cap: ``restart`` if text was sent,
        then at the task's end its whole text as one piece and its status."""
        if seen:
            yield Piece(RESTART, "", WHOLE_TEXT_ID)
        async for event in self._until_final(task_id):
            if isinstance(event, TaskStatus):
                whole = _whole_text(event)
                if whole is not None:
                    last: list[Any] = await self._redis.xrevrange(key, count=1) or []
                    end_id = _text(last[0][0]) if last else WHOLE_TEXT_ID
                    yield Piece(TOKEN, whole.text, end_id)
            yield event

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

    async def _changed(self, task_id: str, most_s: float = KEEPALIVE_S) -> None:
        """Until the task changes, or ``most_s`` passed (a keep-alive is due)."""
        try:
            await self._store.wait(task_id, most_s)
        except TooManyWaiters:  # look again in a while
            await asyncio.sleep(min(most_s, BLOCK_MS / 1000))

    async def _from_stream(self, task_id: str, last_id: str | None) -> AsyncIterator[Event]:
        key = keys.tokens(task_id)
        cursor = last_id or "0-0"
        seen = last_id is not None
        expected = await self._place_after(key, last_id)
        quiet_since = time.monotonic()
        while True:
            answer: Any = await self._redis.xread(
                {key: cursor}, count=ENTRIES_PER_READ, block=BLOCK_MS
            )
            ended = False
            for entry_id, fields in answer[0][1] if answer else []:
                place = _place(fields)
                if place and expected and place != expected:
                    async for event in self._after_trim(task_id, key, seen):
                        yield event
                    return
                expected = place + 1 if place else None
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
                yield Expired(task_id)  # its retention ran out meanwhile
                return
            if ended or status.status.is_final:
                async for event in self._rest(key, cursor, status, seen):
                    yield event
                return
            if status.status is TaskState.QUEUED:
                yield _queued(status)  # after a quiet XREAD: once a second at most
            if time.monotonic() - quiet_since >= KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield None

    async def _place_first(self, task_id: str) -> Queued | None:
        """The place of a task not started yet, before its first read."""
        status = await self._store.get(task_id)
        if status is None or status.status is not TaskState.QUEUED:
            return None
        return _queued(status)

    async def _place_after(self, key: str, last_id: str | None) -> int | None:
        """The place the entry after ``last_id`` must have (``None``: any): 1 from the start,
        or when ``last_id`` is no longer in the stream (its place is unknown: only a stream
        that still starts at its first entry lost nothing)."""
        if last_id is None:
            return 1
        found: list[Any] = await self._redis.xrange(key, min=last_id, max=last_id, count=1) or []
        if not found:
            return 1
        place = _place(found[0][1])
        return place + 1 if place else None

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


def _queued(status: TaskStatus) -> Queued:
    return Queued(status.queue_position, status.estimated_start_s)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _place(fields: dict[Any, Any]) -> int:
    """An entry's place in its stream; 0 for one without (an end mark, an older worker's)."""
    raw = fields.get(PLACE.encode(), b"0")
    return int(raw) if raw.isdigit() else 0


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
