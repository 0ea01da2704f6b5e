"""A streaming task's token stream: its pieces of text in Redis, as they arrive.

Each task that streams has one Redis stream (:func:`worker.keys.tokens`) of entries with a
field ``k`` (the kind) and, for a piece, ``t`` (its text):

- ``token``: a piece of text;
- ``restart``: the call that sent the pieces before broke and another attempt begins: the text
  so far is to be discarded;
- ``end``: the task's final status is stored (read it from the task, not from here).

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
TOKEN = "token"
RESTART = "restart"
END = "end"


@dataclass
class CallSink:
    """Where one streaming call's pieces go (the ``on_piece`` of the endpoint client)."""

    stream: TokenStream
    task_id: str
    failed: bool = field(default=False)

    def __call__(self, text: str) -> None:
        if self.failed:
            return
        if not self.stream.append(self.task_id, TOKEN, text):
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
        if last and _kind(last[0][1]) == TOKEN:
            self.append(task_id, RESTART)
        return CallSink(self, task_id)

    def ended(self, task_id: str) -> None:
        """Mark the end: the task's final status is stored."""
        self.append(task_id, END)

    def append(self, task_id: str, kind: str, text: str | None = None) -> bool:
        """One entry; ``False`` (logged) when Redis did not take it."""
        entry: dict[Any, Any] = {KIND: kind} if text is None else {KIND: kind, TEXT: text}
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
