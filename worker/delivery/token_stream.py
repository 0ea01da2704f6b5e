"""A streaming task's token stream: its pieces of text in Redis, as they arrive.

Each task that streams has one Redis stream (:func:`worker.keys.tokens`) of entries with a
field ``k`` (the kind) and, for a piece, ``t`` (its text):

- ``token``: a piece of text;
- ``restart``: the call that sent the pieces before broke and another attempt begins: the text
  so far is to be discarded;
- ``end``: the task's final status is stored (read it from the task, not from here).

A token or a restart also has ``n``, its place in the stream (1 for the first entry, one more
for each after it, across the calls of the task): a reader whose next entry is not the one it
expects knows that the stream's cap trimmed what lies between (:mod:`api_producer.token_follow`).

The stream is bounded (:data:`TOKEN_STREAM_MAXLEN` entries; a call's pieces are bounded by its
answer's byte cap too) and lives as long as the task's result. Appends are best-effort: a piece
that Redis does not take is logged once per call and dropped (the final result, stored by the
task's end script, is complete whatever happens here; a follower that missed pieces still gets
the whole status with ``done``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import redis

from worker import keys

log = logging.getLogger("genqueue.tokens")

#: Entries a token stream keeps: more than the pieces of the largest ``max_tokens``
#: (:data:`worker.contract.MAX_TOKENS_LIMIT`, a piece being a token or more) and its restarts.
TOKEN_STREAM_MAXLEN = 50_000
KIND = "k"
TEXT = "t"
#: The entry's place in the stream (from 1).
PLACE = "n"
TOKEN = "token"
RESTART = "restart"
END = "end"


@dataclass
class CallSink:
    """Where one streaming call's pieces go (the ``on_piece`` of the endpoint client)."""

    stream: TokenStream
    task_id: str
    #: The place of the stream's last entry.
    place: int = 0
    failed: bool = field(default=False)

    def __call__(self, text: str) -> None:
        if self.failed:
            return
        if self.stream.append(self.task_id, TOKEN, text, self.place + 1):
            self.place += 1
        else:
            self.failed = True


class TokenStream:
    """Writes token streams.

    :param client: the Redis client of the task records.
    :param ttl_s: how long a stream is kept (the result retention).
    """

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s

    def call(self, task_id: str) -> CallSink:
        """The sink of a call about to stream; a ``restart`` first when an earlier attempt
        left pieces (its call broke, or its worker died) so followers discard them."""
        try:
            last = self._redis.xrevrange(keys.tokens(task_id), count=1)
        except redis.RedisError as err:
            log.warning("task %s: token stream unreadable (%s)", task_id, type(err).__name__)
            last = []
        place = _place(last[0][1]) if last else 0
        if last and _kind(last[0][1]) == TOKEN and self.append(task_id, RESTART, place=place + 1):
            place += 1
        return CallSink(self, task_id, place)

    def ended(self, task_id: str) -> None:
        """Mark the end: the task's final status is stored."""
        self.append(task_id, END)

    def append(
        self, task_id: str, kind: str, text: str | None = None, place: int | None = None
    ) -> bool:
        """One entry (at ``place``, when it has one); ``False`` (logged) when Redis did not
        take it."""
        entry: dict[Any, Any] = {KIND: kind}
        if text is not None:
            entry[TEXT] = text
        if place is not None:
            entry[PLACE] = place
        key = keys.tokens(task_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(key, entry, maxlen=TOKEN_STREAM_MAXLEN, approximate=True)
        pipe.expire(key, self._ttl_s)
        try:
            pipe.execute()
        except redis.RedisError as err:
            log.warning(
                "task %s: a %s could not be added to its token stream (%s); followers get the "
                "final status", task_id, kind, type(err).__name__,
            )  # fmt: skip
            return False
        return True


def _kind(fields: Any) -> str:
    value = fields.get(KIND.encode(), fields.get(KIND, b""))
    return value.decode() if isinstance(value, bytes) else str(value)


def _place(fields: Any) -> int:
    """An entry's place; 0 for one without (the end mark, or a stream of an older worker)."""
    value = fields.get(PLACE.encode(), fields.get(PLACE, b"0"))
    try:
        return int(value)
    except ValueError:
        return 0
