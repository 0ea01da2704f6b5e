"""Task events for Flower sent in batches, as Celery does on its own event loop.

Celery publishes every task event (received, started, succeeded, ...) as its own Redis PUBLISH,
except on the prefork pool's event loop, where it buffers them and sends a list (``task.multi``)
that every event receiver, Flower's included, unpacks. On the gevent pool it publishes one at a
time: three publishes per task, 18 % of a worker's CPU in the profile (BENCHMARKS.md).

:class:`BatchedTaskEvents` turns Celery's own buffering on for the gevent pool: a batch goes out
when it holds ``BATCH_EVENTS`` events or ``FLUSH_INTERVAL_S`` after its first, whichever comes
first, and when the worker stops. What it trades: Flower sees a task's events up to
``FLUSH_INTERVAL_S`` later, and a worker killed with SIGKILL loses the events of its last
``FLUSH_INTERVAL_S`` (the tasks themselves are not affected; events are for watching).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

log = logging.getLogger("genqueue.events")

#: Events sent in one publish at most.
BATCH_EVENTS = 64
#: The longest an event waits in the buffer.
FLUSH_INTERVAL_S = 0.2
_TASK_GROUP = "task"


class BatchedTaskEvents(bootsteps.StartStopStep):
    """Buffers the consumer's task events and flushes them on a timer."""

    requires = {"celery.worker.consumer.events:Events"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stopped: threading.Event | None = None

    def start(self, parent: Any) -> None:
        dispatcher = parent.event_dispatcher
        if dispatcher is None or not dispatcher.enabled or dispatcher.buffer_group:
            return  # events off, or Celery already buffers (its own event loop)
        dispatcher.buffer_group = frozenset({_TASK_GROUP})
        dispatcher.buffer_limit = BATCH_EVENTS
        self._stopped = threading.Event()
        flusher = threading.Thread(
            target=self._flush_until_stopped,
            args=(parent, self._stopped),
            name="genqueue-event-flush",
            daemon=True,
        )
        flusher.start()

    def stop(self, parent: Any) -> None:
        if self._stopped is not None:
            self._stopped.set()
            self._stopped = None
        _flush(parent)

    shutdown = stop

    @staticmethod
    def _flush_until_stopped(parent: Any, stopped: threading.Event) -> None:
        while not stopped.wait(FLUSH_INTERVAL_S):
            _flush(parent)


def _flush(parent: Any) -> None:
    dispatcher = parent.event_dispatcher
    if dispatcher is None or not dispatcher._group_buffer.get(_TASK_GROUP):
        return
    try:
        dispatcher.flush(errors=True, groups=True)
    except Exception:  # Redis away: the events wait in the buffer for the next flush
        log.warning("could not send task events", exc_info=True)
