"""The task lines of ``genqueue up``: one a finished task, read from the completion stream.

``12:00:01 <task id> succeeded (812 ms)``: when it finished, how it ended (with the error type
when it failed) and how long it took from its acceptance, plus its attempts when there were
several. A thread reads ``genqueue:events`` with ``XREAD`` (no consumer group, so it takes
nothing from the stream's consumers) and the tasks' acceptance times in one pipelined round
trip per batch. Past :data:`LINES_PER_S` tasks in a second, the rest are counted on one line.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

import redis

from worker import keys
from worker.delivery.records import F_CREATED
from worker.observability.completion_stream import EVENTS_STREAM

#: Task lines shown in a second; the tasks beyond are counted on one line.
LINES_PER_S = 10
#: How long one XREAD waits for entries, and how many it takes at most.
_BLOCK_MS = 1000
_BATCH = 500
#: Pause after Redis failed to answer (the main loop reports a dead embedded Redis).
_RETRY_S = 1.0


@dataclass(frozen=True)
class Finished:
    """A task's entry in the completion stream."""

    task_id: str
    status: str
    error_type: str = ""
    attempts: int = 1
    finished_at: float = 0.0  # epoch seconds
    took_s: float | None = None  # from its acceptance by the API to its end


def _clock(epoch_s: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch_s))


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def task_line(task: Finished) -> str:
    """``HH:MM:SS <id> <status>[: <error type>] (<duration>[, <n> attempts])``."""
    text = f"{_clock(task.finished_at)} {task.task_id} {task.status}"
    if task.error_type:
        text += f": {task.error_type}"
    details = [duration(task.took_s)] if task.took_s is not None else []
    if task.attempts > 1:
        details.append(f"{task.attempts} attempts")
    return f"{text} ({', '.join(details)})" if details else text


class LineBudget:
    """At most ``per_s`` task lines a second; a count line for the rest of that second."""

    def __init__(self, per_s: int = LINES_PER_S) -> None:
        self.per_s = per_s
        self._window_start = float("-inf")
        self._shown = 0
        self._held: Counter[str] = Counter()

    def lines(self, tasks: Iterable[Finished], now: float) -> list[str]:
        """The lines to print for ``tasks`` at monotonic time ``now`` (call it when idle too)."""
        out = self._roll(now)
        for task in tasks:
            if self._shown < self.per_s:
                out.append(task_line(task))
                self._shown += 1
            else:
                self._held[task.status] += 1
        return out

    def flush(self) -> list[str]:
        """The count line of the tasks held back, if any (when the watcher stops)."""
        if not self._held:
            return []
        counts = ", ".join(f"{n} {status}" for status, n in sorted(self._held.items()))
        total = sum(self._held.values())
        self._held.clear()
        return [f"{_clock(time.time())} ... and {total} more finished: {counts}"]

    def _roll(self, now: float) -> list[str]:
        if now - self._window_start < 1.0:
            return []
        self._shown = 0
        self._window_start = now
        return self.flush()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _epoch(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


def _finished(entry_id: Any, fields: dict[Any, Any], created: Any) -> Finished:
    got = {_text(k): _text(v) for k, v in fields.items()}
    end = _epoch(got.get("finished_at", "")) or int(_text(entry_id).split("-")[0]) / 1000
    start = _epoch(_text(created)) if created else None
    attempts = got.get("attempts", "1")
    return Finished(
        task_id=got.get("task_id", "?"),
        status=got.get("status", "?"),
        error_type=got.get("error_type", ""),
        attempts=int(attempts) if attempts.isdigit() else 1,
        finished_at=end,
        took_s=None if start is None else end - start,
    )


class TaskWatcher:
    """Prints a line per task that finishes from now on (a daemon thread; :meth:`stop` ends it).

    :param redis_url: the Redis the worker writes the completion stream to.
    :param out: where the lines go.
    """

    def __init__(self, redis_url: str, out: TextIO | None = None) -> None:
        self._client = redis.Redis.from_url(
            redis_url, socket_timeout=_BLOCK_MS / 1000 + 5, socket_connect_timeout=5
        )
        self._out = out or sys.stdout
        self._last = self._now_id()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="up-tasks", daemon=True)

    def _now_id(self) -> str:
        """A stream id for "now" by Redis's clock: tasks that finish later come after it."""
        try:
            seconds, micros = self._client.time()  # type: ignore[misc]
        except redis.RedisError:
            return "$"
        return f"{int(seconds) * 1000 + int(micros) // 1000}-0"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(_BLOCK_MS / 1000 + 2)
        self._client.close()

    def _run(self) -> None:
        budget = LineBudget()
        while not self._stopping.is_set():
            try:
                tasks = self._read()
            except redis.RedisError:
                tasks = []
                self._stopping.wait(_RETRY_S)
            self._print(budget.lines(tasks, time.monotonic()))
        self._print(budget.flush())

    def _print(self, lines: list[str]) -> None:
        for line in lines:
            print(line, file=self._out, flush=True)

    def _read(self) -> list[Finished]:
        reply: Any = self._client.xread({EVENTS_STREAM: self._last}, count=_BATCH, block=_BLOCK_MS)
        entries = reply[0][1] if reply else []
        if not entries:
            return []
        self._last = _text(entries[-1][0])
        pipe = self._client.pipeline(transaction=False)
        for _, fields in entries:
            pipe.hget(keys.task_record(_text(fields.get(b"task_id"))), F_CREATED)
        created = pipe.execute()
        return [_finished(i, f, c) for (i, f), c in zip(entries, created, strict=True)]
