"""Every Redis key genqueue writes, in one place. Each has a TTL or a bound."""

from __future__ import annotations

from collections.abc import Iterable

from worker.contract import PRIORITY_MAX

PREFIX = "genqueue"


def task_record(task_id: str) -> str:
    """Hash: created_at, metadata, attempts, timestamps, error. TTL: result retention."""
    return f"{PREFIX}:task:{task_id}"


def tokens(task_id: str) -> str:
    """Stream of a streaming task's pieces of text, ``restart`` and ``end`` marks. TTL: result
    retention; bounded by ``worker.delivery.token_stream.TOKEN_STREAM_MAXLEN`` entries."""
    return f"{PREFIX}:tokens:{task_id}"


def idempotency(key_digest: str) -> str:
    """String ``task_id body_digest``. TTL: idempotency retention."""
    return f"{PREFIX}:idem:{key_digest}"


def lease(endpoint_id: str) -> str:
    """Sorted set of in-flight call tokens scored by expiry. Bounded by the concurrency cap."""
    return f"{PREFIX}:lease:{endpoint_id}"


def celery_result(task_id: str) -> str:
    """Celery's own result key (its Redis backend's default naming)."""
    return f"celery-task-meta-{task_id}"


def running(task_id: str) -> str:
    """String: the token of the worker running the task now. TTL: renewed by its heartbeat."""
    return f"{PREFIX}:running:{task_id}"


def breaker(endpoint_id: str) -> str:
    """Hash: consecutive failures, ``open_until`` and ``cooldown`` (ms), and ``served``, the
    successes counted. TTL: an hour after its last change."""
    return f"{PREFIX}:breaker:{endpoint_id}"


def breaker_probe(endpoint_id: str) -> str:
    """String: held by the one call probing a half-open breaker. TTL: a lease's."""
    return f"{PREFIX}:breaker-probe:{endpoint_id}"


def dropped(endpoint_id: str) -> str:
    """String: the calls in flight when the endpoint dropped its connections, shared by every
    call dropped at that moment (see :mod:`worker.pipeline.request_faults`). TTL: half a second."""
    return f"{PREFIX}:dropped:{endpoint_id}"


def rate(endpoint_id: str) -> str:
    """Hash: this minute's window and the requests and tokens spent in it. TTL: 2 minutes."""
    return f"{PREFIX}:rate-limit:{endpoint_id}"


def inbox() -> str:
    """Sorted set of accepted task ids scored by submission (or last resend) time. Trimmed to
    the result retention by the reaper, which removes finished tasks as it meets them."""
    return f"{PREFIX}:inbox"


def reaper_lock() -> str:
    """String: held by the one worker sweeping for lost messages. TTL: the sweep interval."""
    return f"{PREFIX}:reaper-lock"


def dead_letters() -> str:
    """List of dead-lettered tasks, newest first. Bounded by ``dead_letter_max``."""
    return f"{PREFIX}:dead"


def unreadable() -> str:
    """List of raw broker messages that are not kombu messages (set aside by a worker),
    newest first. Bounded by ``worker.delivery.broker.UNREADABLE_MAX``."""
    return f"{PREFIX}:unreadable"


def batch(batch_id: str) -> str:
    """Hash: created_at, total, cancelled_at. TTL: result retention."""
    return f"{PREFIX}:batch:{batch_id}"


def batch_tasks(batch_id: str) -> str:
    """List of ``<task_id> <custom_id>`` in input order. TTL: result retention."""
    return f"{PREFIX}:batch:{batch_id}:tasks"


#: kombu's separator between a queue's name and its priority step in the Redis list's name.
PRIORITY_SEP = "\x06\x16"


def queue_lists(queues: Iterable[str]) -> list[str]:
    """Every Redis list of ``queues``: the queue itself (step 0) and each priority step."""
    return [
        queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}"
        for queue in queues
        for step in range(PRIORITY_MAX + 1)
    ]


#: Pub/sub channel on which the API announces cancellations of running tasks.
CANCEL_CHANNEL = f"{PREFIX}:cancel"
