"""``genqueue status`` without a task id: a live view of the service, read from Redis.

Queue depth, each endpoint's calls in flight against its ``max_concurrency`` and its circuit
breaker, dead letters, and what ended in the last minute (counted from the completion stream
``genqueue:events``), refreshed every 2 s; ``--once`` prints it once.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TextIO

import redis

from api_producer.producers.direct import describe_redis_error
from worker import connections
from worker.endpoints.config import load_endpoints
from worker.observability.completion_stream import RecentEvents, recent
from worker.observability.snapshot import Snapshot, endpoint_caps
from worker.settings import Settings

REFRESH_S = 2.0
WINDOW_S = 60.0
_CLEAR = "\x1b[H\x1b[2J"


@dataclass(frozen=True)
class View:
    snapshot: Snapshot
    recent: RecentEvents
    at: datetime


def read_view(client: redis.Redis, settings: Settings) -> View:
    """Everything the view shows, read now (one pipeline, then the stream)."""
    caps = endpoint_caps(load_endpoints(settings))
    pipe = client.pipeline(transaction=False)
    Snapshot.commands(pipe, caps)
    snapshot = Snapshot.parse(pipe.execute(), caps)
    return View(snapshot, recent(client, WINDOW_S), datetime.now(UTC))


def _counts(counter: dict[str, int], names: tuple[str, ...] = ()) -> str:
    keys = list(names) + sorted(k for k in counter if k not in names)
    return "  ".join(f"{k} {counter.get(k, 0)}" for k in keys) or "none"


def render(view: View, note: str | None = None) -> str:
    """The view as lines of text (``note``: which Redis, when REDIS_URL did not say)."""
    snap, ended = view.snapshot, view.recent
    lines = [f"genqueue status  {view.at:%Y-%m-%d %H:%M:%S} UTC"]
    if note:
        lines.append(f"redis            {note.removeprefix('Redis ')}")
    lines.append(f"queue depth      {snap.queue_depth}")
    if not snap.endpoints:
        lines.append("in flight        unknown (set RUNPOD_ENDPOINT_URL to see the endpoint)")
        lines.append("breaker          unknown")
    for endpoint in snap.endpoints:
        lines.append(
            f"in flight        {endpoint.in_flight} / {endpoint.max_concurrency}"
            f"  (endpoint {endpoint.endpoint_id})"
        )
        breaker = endpoint.breaker_state
        if breaker == "open":
            breaker += f" (probe in {endpoint.breaker_retry_in_s:.0f}s)"
        if endpoint.breaker_failures:
            breaker += f", {endpoint.breaker_failures} consecutive failures"
        lines.append(f"breaker          {breaker}")
    lines.append(f"dead letters     {snap.dead_letters}")
    if snap.unreadable:
        lines.append(f"unreadable       {snap.unreadable} (set aside in genqueue:unreadable)")
    statuses = ("succeeded", "failed", "cancelled")
    rate = ended.total / ended.window_s
    lines.append(f"last minute      {_counts(ended.by_status, statuses)}  ({rate:.2f}/s)")
    lines.append(f"failures (1 min) {_counts(ended.failures_by_type)}")
    return "\n".join(lines)


def run_status_view(
    settings: Settings,
    once: bool = False,
    out: TextIO = sys.stdout,
    refresh_s: float = REFRESH_S,
    note: str | None = None,
) -> int:
    """Print the view once, or every ``refresh_s`` until Ctrl-C.

    :param note: which Redis this is, when REDIS_URL did not name it: also the first line on
        stderr, so that an error reading it says where it looked.
    """
    if note:
        print(f"genqueue status: {note}", file=sys.stderr, flush=True)
    client = connections.sync_client(settings, max_connections=2)
    live = not once and out.isatty()
    try:
        while True:
            try:
                text = render(read_view(client, settings), note)
            except (redis.RedisError, OSError) as err:
                text = f"genqueue status: {describe_redis_error(err)} ({type(err).__name__})"
                if once:
                    print(text, file=sys.stderr)
                    return 1
            print((_CLEAR if live else "") + text, file=out, flush=True)
            if once:
                return 0
            if not live:
                print(file=out)
            time.sleep(refresh_s)
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()
