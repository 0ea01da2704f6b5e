"""Every final task state as Celery's Redis backend publishes it, with the time it was seen."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

import redis

from worker.keys import CELERY_RESULT_PREFIX as RESULT_PREFIX

FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


class ResultWatcher:
    """Sees every final task state as Celery's Redis backend publishes it, with its time."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe(f"{RESULT_PREFIX}*")
        self._pubsub.get_message(timeout=1.0)  # the subscription is in place
        self._cond = threading.Condition()
        self._done: dict[str, tuple[float, str]] = {}
        self._expected: set[str] = set()
        self._expected_done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-results", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.1)
            except (redis.RedisError, OSError):
                time.sleep(0.1)
                continue
            if message is not None:
                self._record(message, time.monotonic())

    def _record(self, message: dict[str, Any], seen: float) -> None:
        try:
            state = json.loads(message["data"]).get("status")
        except (ValueError, TypeError, AttributeError):
            return
        if state not in FINAL_STATES:
            return
        task_id = message["channel"].decode().removeprefix(RESULT_PREFIX)
        with self._cond:
            if task_id in self._done:
                return
            self._done[task_id] = (seen, state)
            if task_id in self._expected:
                self._expected_done += 1
            self._cond.notify_all()

    def begin(self, task_ids: list[str]) -> None:
        """Forget what was seen; from now on count the final states of ``task_ids``."""
        with self._cond:
            self._done.clear()
            self._expected = set(task_ids)
            self._expected_done = 0

    def wait_all(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: self._expected_done >= len(self._expected), timeout_s
            )

    def finish_times(self) -> list[float]:
        with self._cond:
            return sorted(t for task_id, (t, _) in self._done.items() if task_id in self._expected)

    def done_at(self, task_ids: list[str]) -> dict[str, float]:
        """When each of ``task_ids`` that reached a final state was seen to."""
        with self._cond:
            return {t: self._done[t][0] for t in task_ids if t in self._done}

    def wait_for(self, task_id: str, timeout_s: float) -> float | None:
        """When ``task_id``'s final state was seen (``None`` after ``timeout_s``)."""
        with self._cond:
            if self._cond.wait_for(lambda: task_id in self._done, timeout_s):
                return self._done[task_id][0]
        return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with contextlib.suppress(Exception):
            self._pubsub.close()
        self._client.close()
