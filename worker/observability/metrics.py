"""What genqueue tells operators: Prometheus metrics and one structured log line per state change.

- :class:`WorkerMetrics`: the counters, histograms and gauge of one worker process, on a
  registry of its own, served by :func:`serve_worker_metrics` on
  ``GENQUEUE_WORKER_METRICS_PORT`` + the process's index.
- :class:`TaskObserver`: called by :class:`~worker.pipeline.generation.Generation` at each state
change
  (started, retry, succeeded, failed, cancelled); it counts and writes one line on the
  ``genqueue.task`` logger, with ``task_id``, ``attempt``, ``endpoint``, ``latency_ms`` and
  ``outcome``. :func:`configure_task_logging` makes those lines JSON objects when
  ``GENQUEUE_LOG_FORMAT=json``. Prompts and outputs appear only with ``GENQUEUE_LOG_PROMPTS``.

The shared state in Redis (queue depth, calls in flight, breakers) is
:mod:`worker.observability.snapshot`'s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from worker.contract import GenerationResult

TASK_LOGGER = "genqueue.task"
log = logging.getLogger(TASK_LOGGER)

#: Seconds: an endpoint call on a GPU takes from a fraction of a second to the proxy's 100 s.
ENDPOINT_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 100)
#: Seconds from submission to the end, queueing and retries included.
TASK_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)


class WorkerMetrics:
    """The Prometheus metrics of one worker process.

    :param registry: where they are registered; a new one by default, so that several sets
        can live in one process (tests).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.succeeded = Counter(
            "genqueue_worker_tasks_succeeded", "Tasks that succeeded.", registry=r
        )
        self.failed = Counter(
            "genqueue_worker_tasks_failed", "Tasks that failed, by error type.",
            ["error_type"], registry=r,
        )  # fmt: skip
        self.retried = Counter(
            "genqueue_worker_tasks_retried", "Retries, by the error that caused them.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.cancelled = Counter("genqueue_worker_tasks_cancelled", "Tasks cancelled.", registry=r)
        self.expired = Counter(
            "genqueue_worker_tasks_expired", "Tasks whose deadline passed.", registry=r
        )
        self.endpoint_latency = Histogram(
            "genqueue_worker_endpoint_latency_seconds", "Endpoint calls, successful or not.",
            buckets=ENDPOINT_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.task_latency = Histogram(
            "genqueue_worker_task_latency_seconds", "From submission to the final state.",
            ["outcome"], buckets=TASK_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "genqueue_worker_prompt_tokens", "Prompt tokens of successful tasks.", registry=r
        )
        self.completion_tokens = Counter(
            "genqueue_worker_completion_tokens", "Tokens generated for successful tasks.",
            registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "genqueue_worker_tasks_in_flight", "Tasks this process is running.", registry=r
        )
        self.webhooks = Counter(
            "genqueue_worker_webhooks", "Webhook delivery attempts, by outcome.",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.pod_decisions = Counter(
            "genqueue_worker_pod_decisions", "Decisions about endpoints' pods (start, stop...).",
            ["endpoint", "decision"], registry=r,
        )  # fmt: skip


_process_lock = threading.Lock()
_process_metrics: dict[int, WorkerMetrics] = {}


def process_metrics() -> WorkerMetrics:
    """This process's metrics (a new set after a fork)."""
    pid = os.getpid()
    metrics = _process_metrics.get(pid)
    if metrics is None:
        with _process_lock:
            metrics = _process_metrics.setdefault(pid, WorkerMetrics())
    return metrics


class TaskLine:
    """The fields of one task log line; formatted only if the line is written.

    Text: ``task <id> <event> attempt=1 endpoint=... latency_ms=812 outcome=succeeded``.
    """

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        fields = self.fields
        parts = [f"task {fields['task_id']} {fields['event']}"]
        for name, value in fields.items():
            if name in ("task_id", "event") or value is None:
                continue
            parts.append(f"{name}={_logfmt(value)}")
        return " ".join(parts)


_QUOTE = frozenset(' "=\n\r\t')


def _logfmt(value: Any) -> str:
    """A value of a text line: bare when it can be, JSON-quoted otherwise."""
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    if text and not _QUOTE.intersection(text):
        return text
    return json.dumps(text, ensure_ascii=False)


#: The endpoint the current task is being served by, for the log lines.
CURRENT_ENDPOINT: ContextVar[str | None] = ContextVar("genqueue_endpoint", default=None)


class TaskObserver:
    """Counts and logs the state changes of tasks.

    :param metrics: where to count (``None``: this process's :func:`process_metrics`).
    :param endpoint_id: the endpoint's secret-free id, put in every line.
    :param log_prompts: put prompts and outputs in the lines (debugging only).
    :param on_call: told the endpoint of each call that ended (the last-call clock).
    """

    def __init__(
        self,
        metrics: WorkerMetrics | None = None,
        endpoint_id: str | None = None,
        log_prompts: bool = False,
        on_call: Callable[[str | None], None] | None = None,
    ) -> None:
        self.metrics = metrics or process_metrics()
        self._on_call = on_call
        self._endpoint = endpoint_id
        self._log_prompts = log_prompts
        m = self.metrics
        self._task_latency = {
            outcome: m.task_latency.labels(outcome)
            for outcome in ("succeeded", "failed", "cancelled")
        }

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """The block runs a task: counted in the in-flight gauge."""
        gauge = self.metrics.in_flight
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def _line(self, event: str, outcome: str, task_id: str, attempt: int, **fields: Any) -> None:
        if log.isEnabledFor(logging.INFO):
            line = {"event": event, "task_id": task_id, "attempt": attempt}
            line["endpoint"] = self._endpoint or CURRENT_ENDPOINT.get()
            line.update(fields)
            line["outcome"] = outcome
            log.info("%s", TaskLine(line), extra={"genqueue": line})

    def started(self, task_id: str, attempt: int, prompt: str) -> None:
        shown = prompt if self._log_prompts else None
        self._line("started", "running", task_id, attempt=attempt, prompt=shown)

    def called(self, latency_s: float) -> None:
        self.metrics.endpoint_latency.observe(latency_s)
        if self._on_call is not None:
            self._on_call(CURRENT_ENDPOINT.get())

    def retrying(
        self,
        task_id: str,
        attempt: int,
        error_type: str,
        message: str,
        delay_s: float,
        latency_ms: int | None = None,
    ) -> None:
        self.metrics.retried.labels(error_type).inc()
        self._line(
            "retry", "retrying", task_id, attempt=attempt, latency_ms=latency_ms,
            error_type=error_type, error=message, retry_in_s=round(delay_s, 3),
        )  # fmt: skip

    def succeeded(
        self, task_id: str, attempts: int, result: GenerationResult, total_s: float | None
    ) -> None:
        m = self.metrics
        m.succeeded.inc()
        m.prompt_tokens.inc(result.usage.prompt_tokens)
        m.completion_tokens.inc(result.usage.completion_tokens)
        total_ms = self._total_ms("succeeded", total_s)
        output = result.text if self._log_prompts else None
        self._line(
            "succeeded", "succeeded", task_id, attempt=attempts, latency_ms=result.latency_ms,
            total_ms=total_ms, tokens=result.usage.completion_tokens, output=output,
        )  # fmt: skip

    def failed(
        self, task_id: str, attempts: int, error_type: str, message: str, total_s: float | None
    ) -> None:
        m = self.metrics
        if error_type == "cancelled":
            m.cancelled.inc()
            outcome = "cancelled"
        else:
            m.failed.labels(error_type).inc()
            if error_type == "expired":
                m.expired.inc()
            outcome = "failed"
        total_ms = self._total_ms(outcome, total_s)
        self._line(
            outcome, outcome, task_id, attempt=attempts, total_ms=total_ms,
            error_type=error_type, error=message,
        )  # fmt: skip

    def _total_ms(self, outcome: str, total_s: float | None) -> int | None:
        if total_s is None or total_s < 0:
            return None
        self._task_latency[outcome].observe(total_s)
        return int(total_s * 1000)


def seconds_since(created_at: bytes | str | None) -> float | None:
    """Seconds from a record's ``created_at`` (ISO 8601) to now; ``None`` if unknown."""
    if not created_at:
        return None
    text = created_at.decode() if isinstance(created_at, bytes) else created_at
    try:
        created = datetime.fromisoformat(text)
    except ValueError:
        return None
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return time.time() - created.timestamp()


# --------------------------------------------------------------------------- logging


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, then the line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "genqueue", None)
        if isinstance(fields, dict):
            line.update((k, v) for k, v in fields.items() if v is not None)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_task_logging(log_format: str, stream: Any = None) -> None:
    """Make the lines of ``genqueue.task`` (and ``genqueue.webhook``) JSON objects, or not.

    ``text`` leaves them to the root logger's handlers (Celery's format); ``json`` gives them
    a handler of their own writing to ``stream`` (stderr by default).
    """
    for name in (TASK_LOGGER, "genqueue.webhook"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if getattr(h, "_genqueue", False)]:
            logger.removeHandler(handler)
        if log_format != "json":
            logger.propagate = True
            continue
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._genqueue = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False


# --------------------------------------------------------------------------- the server


def process_index(nodename: str) -> int:
    """The index ``genqueue worker`` gave this process, from its Celery node name.

    ``genqueueN@host`` by default; with ``--hostname NAME``, process 0 is ``NAME`` and process
    N is ``N-NAME``.
    """
    match = re.match(r"genqueue(\d+)@", nodename) or re.match(r"(\d+)-", nodename)
    return int(match.group(1)) if match else 0


def serve_worker_metrics(port: int, host: str, nodename: str) -> int | None:
    """Serve this process's metrics on ``port`` + its index; the port, or ``None`` if off."""
    if port <= 0:
        return None
    actual = port + process_index(nodename)
    try:
        start_http_server(actual, addr=host, registry=process_metrics().registry)
    except OSError as err:
        logging.getLogger(__name__).warning(
            "worker metrics not served: %s:%d: %s", host, actual, err.strerror or err
        )
        return None
    logging.getLogger(__name__).info("worker metrics on http://%s:%d/metrics", host, actual)
    return actual
