"""Task records: what genqueue knows of a task beside Celery's result.

A record is a Redis hash written by the API when it accepts a task (so an unknown id is a 404)
and by the worker as the task runs (attempts, timestamps, the final error). Celery's result key
stays the source of truth for the state and the result; see :func:`status_from`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import redis

from worker import keys
from worker.contract import ErrorInfo, GenerationResult, TaskState, TaskStatus

# Celery's states, as genqueue reports them.
CELERY_STATES: dict[str, TaskState] = {
    "PENDING": TaskState.QUEUED,
    "RECEIVED": TaskState.QUEUED,
    "STARTED": TaskState.RUNNING,
    "RETRY": TaskState.RETRYING,
    "SUCCESS": TaskState.SUCCEEDED,
    "FAILURE": TaskState.FAILED,
    "REVOKED": TaskState.CANCELLED,
    "REJECTED": TaskState.FAILED,
}

F_CREATED = "created_at"
F_METADATA = "metadata"
F_ATTEMPTS = "attempts"
F_FIRST_ATTEMPT = "first_attempt_at"
F_FINISHED = "finished_at"
F_ERROR = "error"
#: Why the last attempt failed, noted before a retry (shown until the task ends).
F_LAST_ERROR = "last_error"
F_CANCEL = "cancel_requested"
#: The endpoint a task moved to (fallback) and the ones it left, comma-separated.
F_ENDPOINT = "endpoint"
F_TRIED = "endpoints_tried"
#: A serverless job: its id, when it was submitted, how often it was polled.
F_JOB = "job_id"
F_JOB_AT = "job_submitted_at"
F_POLLS = "polls"
#: What a lost message needs to be sent again: the request, its queue, its Celery priority.
F_PAYLOAD = "payload"
F_QUEUE = "queue"
F_PRIORITY = "priority"
#: The tenant the task belongs to (absent: ``internal``), what its submission reserved of the
#: tenant's day budget and on which day (settled by the end script), and whether its usage was
#: counted (once: the end script sets it).
F_TENANT = "tenant"
F_RESERVED = "reserved_tokens"
F_RESERVED_DAY = "reserved_day"
F_COUNTED = "usage_counted"
#: The tokens the task may spend, estimated at submission (worker.contract's
#: request_tokens_estimate): its turn's cost in a backlog fair by tokens (worker.limits.cost).
F_ESTIMATE = "estimated_tokens"
#: Prefix of the per-message delivery counters (``deliveries:<retry round>``).
F_DELIVERIES = "deliveries"


def utcnow_ms() -> datetime:
    """Now, in UTC, to the millisecond (the precision of every time genqueue writes)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond - now.microsecond % 1000)


def iso(moment: datetime) -> str:
    """``moment`` (UTC) as the records write it: ``2026-11-30T16:26:26.853Z``."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utcnow_iso() -> str:
    return iso(utcnow_ms())


def new_record(metadata: dict[str, Any] | None) -> dict[str, str]:
    record = {F_CREATED: utcnow_iso(), F_ATTEMPTS: "0"}
    if metadata is not None:
        record[F_METADATA] = json.dumps(metadata, separators=(",", ":"))
    return record


def _decode(raw: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }


def _meta(raw_meta: bytes | str | None) -> dict[str, Any]:
    return json.loads(raw_meta) if raw_meta else {}


def _state(record: dict[str, str], meta: dict[str, Any]) -> TaskState:
    """The one rule from Celery's state and the record to the state genqueue reports."""
    state = CELERY_STATES.get(meta.get("status", "PENDING"), TaskState.QUEUED)
    if state is TaskState.QUEUED and record.get(F_CANCEL):
        return TaskState.CANCELLED
    if state is TaskState.RETRYING and record.get(F_JOB) and not record.get(F_FINISHED):
        return TaskState.RUNNING  # polling its serverless job, not failing
    return state


def state_from(raw_record: dict[Any, Any], raw_meta: bytes | str | None) -> TaskState:
    """The state :func:`status_from` reports, without building the whole status."""
    return _state(_decode(raw_record), _meta(raw_meta))


def read_status(client: redis.Redis, results: redis.Redis, task_id: str) -> TaskStatus | None:
    """A task's status, read from its record (``client``) and its result (``results``, the
    Redis of Celery's results): one round trip when they are one Redis. ``None``: unknown."""
    if results is client:
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(keys.task_record(task_id))
        pipe.get(keys.celery_result(task_id))
        record, meta = pipe.execute()
    else:
        record = client.hgetall(keys.task_record(task_id))
        meta = results.get(keys.celery_result(task_id))
    if not record and meta is None:
        return None
    return status_from(task_id, record, meta)


def status_from(
    task_id: str, raw_record: dict[Any, Any], raw_meta: bytes | str | None
) -> TaskStatus:
    """A task's status from its record and Celery's result meta (either may be missing)."""
    record = _decode(raw_record)
    meta = _meta(raw_meta)
    state = _state(record, meta)
    result = None
    error = None
    if state is TaskState.SUCCEEDED and isinstance(meta.get("result"), dict):
        result = GenerationResult.model_validate(meta["result"])
    if state is TaskState.FAILED:
        error = _error_from(record, meta)
    if state is TaskState.CANCELLED:
        error = ErrorInfo(type="cancelled", message="the task was cancelled")
    last_error = None
    if F_LAST_ERROR in record and not state.is_final:
        last_error = _error_info(record[F_LAST_ERROR])
    finished_at = record.get(F_FINISHED) or (meta.get("date_done") if state.is_final else None)
    return TaskStatus.model_validate(
        {
            "task_id": task_id,
            "status": state,
            "attempts": int(record.get(F_ATTEMPTS, "0")),
            "result": result,
            "error": error,
            "last_error": last_error,
            "metadata": json.loads(record[F_METADATA]) if F_METADATA in record else None,
            "created_at": record.get(F_CREATED),
            "finished_at": finished_at,
        }
    )


def _error_from(record: dict[str, str], meta: dict[str, Any]) -> ErrorInfo:
    if F_ERROR in record:
        return _error_info(record[F_ERROR])
    exc = meta.get("result") or {}
    message = exc.get("exc_message") if isinstance(exc, dict) else None
    if isinstance(message, list | tuple):
        message = " ".join(str(part) for part in message)
    exc_type = exc.get("exc_type", "error") if isinstance(exc, dict) else "error"
    return ErrorInfo(type=str(exc_type), message=str(message or "the task failed"))


def _error_info(stored: str) -> ErrorInfo:
    # json.loads, not pydantic's parser: that refuses an escaped lone surrogate outright,
    # where ErrorInfo replaces it (a record written before genqueue did so itself).
    return ErrorInfo.model_validate(json.loads(stored))


def revoked_meta(task_id: str) -> str:
    """Celery's REVOKED result meta for a task cancelled before it ran (as Celery stores it)."""
    return json.dumps(
        {
            "status": "REVOKED",
            "result": {
                "exc_type": "TaskRevokedError",
                "exc_message": ["cancelled"],
                "exc_module": "celery.exceptions",
            },
            "traceback": None,
            "children": [],
            "date_done": datetime.now(UTC).isoformat(),
            "task_id": task_id,
        }
    )
