"""When each endpoint's last call ended, shared by every worker.

A call ending costs no round trip: this process notes it in memory, and a background thread
writes the latest of each endpoint once every :data:`FLUSH_S` (``ZADD GT`` on
:func:`worker.keys.last_calls`, so the latest of all the workers stays).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import redis

from worker import keys

log = logging.getLogger(__name__)

FLUSH_S = 1.0


class CallClock:
    """This process's last call to each endpoint, written to Redis every :data:`FLUSH_S`."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._pending: dict[str, int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    def note(self, endpoint: str | None) -> None:
        """A call to ``endpoint`` ended now."""
        if endpoint is None:
            return
        self._pending[endpoint] = int(time.time() * 1000)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._loop, name="genqueue-call-clock", daemon=True
                    )
                    self._thread.start()

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        if pending:
            self._client.zadd(keys.last_calls(), pending, gt=True)

    def close(self) -> None:
        """Stop the thread, writing what is left (best effort)."""
        self._stopped.set()
        with contextlib.suppress(redis.RedisError):
            self.flush()

    def _loop(self) -> None:
        while not self._stopped.wait(FLUSH_S):
            try:
                self.flush()
            except redis.RedisError as err:
                log.warning("could not note the last endpoint calls: %s", type(err).__name__)
