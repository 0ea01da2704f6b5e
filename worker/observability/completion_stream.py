"""The completion stream: one Redis Stream entry per task that reached a final state.

``genqueue:events`` (a Redis Stream, trimmed with ``XADD MAXLEN ~ GENQUEUE_EVENTS_MAXLEN``)
holds ``task_id``, ``status`` (``succeeded``, ``failed``, ``cancelled``), ``error_type`` (empty
when it succeeded), ``finished_at`` (ISO 8601, UTC) and ``attempts``: never a prompt or an
output. Consumers read it with a consumer group (``XREADGROUP`` then ``XACK``) and fetch what
they need by task id.

The worker writes the entry in the same script as its final record write
(:meth:`worker.delivery.task_scripts.Lifecycle.finish`), so a task's end costs one round trip, and
a task
gets one entry: a result replayed for a redelivered message, or one discarded because the task
was cancelled meanwhile, adds none.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis

from worker import keys

EVENTS_STREAM = keys.EVENTS_STREAM


@dataclass(frozen=True)
class RecentEvents:
    """Final states of the last ``window_s`` seconds, counted by status and by error type."""

    window_s: float
    by_status: Counter[str] = field(default_factory=Counter)
    failures_by_type: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


def recent(client: redis.Redis, window_s: float = 60.0, page: int = 10_000) -> RecentEvents:
    """Count the entries of the last ``window_s`` seconds (by Redis's clock: entry ids are ms)."""
    seconds, micros = client.time()  # type: ignore[misc]
    start_ms = int(seconds) * 1000 + int(micros) // 1000 - int(window_s * 1000)
    counts = RecentEvents(window_s)
    lower = f"{start_ms}-0"
    while True:
        entries: list[Any] = client.xrange(EVENTS_STREAM, min=lower, max="+", count=page)  # type: ignore[assignment]
        for entry_id, fields in entries:
            status = _text(fields.get(b"status"))
            counts.by_status[status] += 1
            error_type = _text(fields.get(b"error_type"))
            if status == "failed" and error_type:
                counts.failures_by_type[error_type] += 1
            last = entry_id
        if len(entries) < page:
            return counts
        lower = f"({_text(last)}"


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
