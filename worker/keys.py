"""Every Redis key genqueue writes, in one place. Each has a TTL or a bound."""

from __future__ import annotations

PREFIX = "genqueue"


def task_record(task_id: str) -> str:
    """Hash: created_at, metadata, attempts, timestamps, error. TTL: result retention."""
    return f"{PREFIX}:task:{task_id}"


def idempotency(key_digest: str) -> str:
    """String ``task_id body_digest``. TTL: idempotency retention."""
    return f"{PREFIX}:idem:{key_digest}"


def lease(endpoint_id: str) -> str:
    """Sorted set of in-flight call tokens scored by expiry. Bounded by the concurrency cap."""
    return f"{PREFIX}:lease:{endpoint_id}"


def celery_result(task_id: str) -> str:
    """Celery's own result key (its Redis backend's default naming)."""
    return f"celery-task-meta-{task_id}"
