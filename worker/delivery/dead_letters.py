"""The dead-letter list: tasks given up on because their worker died on every delivery."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import redis

from worker import keys


class DeadLetters:
    """A bounded Redis list of ``{"task_id", "request", "reason", "at"}``, newest first.

    :param client: the Redis client.
    :param max_entries: the list is trimmed to this length.
    """

    def __init__(self, client: redis.Redis, max_entries: int) -> None:
        self._redis = client
        self._max_entries = max_entries

    def add(self, task_id: str, request: Any, reason: str) -> None:
        entry = {
            "task_id": task_id,
            "request": request,
            "reason": reason,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        pipe = self._redis.pipeline(transaction=True)
        pipe.lpush(keys.dead_letters(), json.dumps(entry))
        pipe.ltrim(keys.dead_letters(), 0, self._max_entries - 1)
        pipe.execute()

    def entries(self, limit: int = 100) -> list[dict[str, Any]]:
        raw = self._redis.lrange(keys.dead_letters(), 0, max(limit, 1) - 1)
        return [json.loads(item) for item in raw]

    def take(self, task_id: str) -> dict[str, Any] | None:
        """Remove and return the entry of ``task_id`` (to requeue it), if there is one."""
        raw_entries: list[bytes] = self._redis.lrange(keys.dead_letters(), 0, -1)  # type: ignore[assignment]
        for raw in raw_entries:
            entry = json.loads(raw)
            if entry["task_id"] == task_id and self._redis.lrem(keys.dead_letters(), 1, raw):  # type: ignore[arg-type]
                return dict(entry)
        return None
