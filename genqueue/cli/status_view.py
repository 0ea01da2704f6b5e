"""``genqueue status`` without a task id: a live view of the service, read from Redis.

Queue depth, each endpoint's calls in flight against its ``max_concurrency`` and its circuit
breaker, dead letters, and what ended in the last minute (counted from the completion stream
``genqueue:events``), refreshed every 2 s; ``--once`` prints it once.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import redis

from api_producer.producers.direct import describe_redis_error
from worker.endpoints.config import load_endpoints
from worker.observability.completion_stream import RecentEvents, recent
from worker.observability.scaling import EndpointSignals, read_signals
from worker.observability.snapshot import EndpointState, Snapshot, endpoint_caps
from worker.redis_io import connections
from worker.settings import Settings

REFRESH_S = 2.0
WINDOW_S = 60.0
_CLEAR = "\x1b[H\x1b[2J"


@dataclass(frozen=True)
class View:
    snapshot: Snapshot
    recent: RecentEvents
    at: datetime
    signals: tuple[EndpointSignals, ...] = ()


def read_view(client: redis.Redis, settings: Settings) -> View:
    """Everything the view shows, read now (one pipeline, then the stream)."""
    endpoints = load_endpoints(settings)
    caps = endpoint_caps(endpoints)
    pipe = client.pipeline(transaction=False)
    Snapshot.commands(pipe, caps)
    snapshot = Snapshot.parse(pipe.execute(), caps)
    signals = tuple(read_signals(client, endpoints))
    return View(snapshot, recent(client, WINDOW_S), datetime.now(UTC), signals)


def view_json(view: View) -> dict[str, Any]:
    """The view as ``genqueue status --json`` prints it."""
    snap = view.snapshot
    breakers = {e.endpoint_id: e for e in snap.endpoints}
    endpoints = []
    for signal in view.signals:
        breaker = breakers.get(signal.endpoint)
        entry: dict[str, Any] = {
            "endpoint": signal.endpoint,
            "queue_depth": signal.queue_depth,
            "oldest_queued_age_s": round(signal.oldest_queued_age_s, 3),
            "in_flight": signal.in_flight,
            "max_concurrency": "auto" if signal.auto else signal.max_concurrency,
            "concurrency_limit": signal.max_concurrency,
            "since_last_call_s": None
            if signal.since_last_call_s is None
            else round(signal.since_last_call_s, 3),
            "breaker": breaker.breaker_state if breaker else None,
        }
        replicas = [e for e in snap.endpoints if e.pool == signal.endpoint]
        if replicas:
            entry["replicas"] = [
                {"replica": r.replica, "in_flight": r.in_flight,
                 "max_concurrency": r.max_concurrency, "breaker": r.breaker_state}
                for r in replicas
            ]  # fmt: skip
        if signal.pod_state is not None:
            entry["pod"] = {
                "state": signal.pod_state,
                "running_hours": round(signal.pod_running_s / 3600, 4),
                "idle_hours": round(signal.pod_idle_s / 3600, 4),
                "usd_per_hour": signal.usd_per_hour,
                "cost_usd": signal.pod_cost_usd,
            }
        endpoints.append(entry)
    return {
        "at": view.at.isoformat(),
        "queue_depth": snap.queue_depth,
        "dead_letters": snap.dead_letters,
        "unreadable": snap.unreadable,
        "endpoints": endpoints,
        "last_minute": dict(view.recent.by_status),
    }


def _signal_lines(view: View) -> list[str]:
    lines = []
    for signal in view.signals:
        since = (
            "never" if signal.since_last_call_s is None else f"{signal.since_last_call_s:.0f}s ago"
        )
        lines.append(
            f"waiting          {signal.queue_depth}, the oldest for "
            f"{signal.oldest_queued_age_s:.0f}s; last call {since}  (endpoint {signal.endpoint})"
        )
        if signal.pod_state is not None:
            cost = "" if signal.pod_cost_usd is None else f", ${signal.pod_cost_usd:.2f}"
            lines.append(
                f"pod              {signal.pod_state}: ran {signal.pod_running_s / 3600:.2f} h, "
                f"{signal.pod_idle_s / 3600:.2f} h of them idle{cost}"
            )
    return lines


def _breaker(endpoint: EndpointState) -> str:
    breaker = endpoint.breaker_state
    if breaker == "open":
        breaker += f" (probe in {endpoint.breaker_retry_in_s:.0f}s)"
    if endpoint.breaker_failures:
        breaker += f", {endpoint.breaker_failures} consecutive failures"
    return breaker


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
        if endpoint.pool is not None:  # a pool's replica, under the pool's lines
            lines.append(
                f"  replica {endpoint.replica:<7}{endpoint.in_flight} / "
                f"{endpoint.max_concurrency}, breaker {_breaker(endpoint)}"
            )
            continue
        auto = f" (auto, at most {endpoint.max_concurrency})" if endpoint.auto else ""
        lines.append(
            f"in flight        {endpoint.in_flight} / {endpoint.limit}{auto}"
            f"  (endpoint {endpoint.endpoint_id})"
        )
        lines.append(f"breaker          {_breaker(endpoint)}")
    lines += _signal_lines(view)
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
    as_json: bool = False,
) -> int:
    """Print the view once, or every ``refresh_s`` until Ctrl-C; as JSON, once.

    :param note: which Redis this is, when REDIS_URL did not name it: also the first line on
        stderr, so that an error reading it says where it looked.
    """
    if note:
        print(f"genqueue status: {note}", file=sys.stderr, flush=True)
    client = connections.sync_client(settings, max_connections=2)
    once = once or as_json
    live = not once and out.isatty()
    try:
        while True:
            try:
                view = read_view(client, settings)
                text = json.dumps(view_json(view)) if as_json else render(view, note)
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
