"""What a batch is: its lines, its rules, its states and the answers about it, and its refusals.

Refusals, each with the HTTP status it is answered with::

    BatchRefused
    ├── UnreadableBody         400  the body is not UTF-8 text
    ├── UnsupportedMediaType   415  neither JSONL nor JSON
    └── BatchInvalid           422  a bad line (named by its number), too many lines, ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from worker.contract import ErrorInfo, GenerationRequest
from worker.endpoints.config import Endpoints
from worker.errors import GenQueueError

JSONL_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/x-jsonlines"})
JSON_TYPE = "application/json"
CUSTOM_ID_MAX_CHARS = 512
#: Bad lines named in one 422; the rest are counted.
PROBLEMS_SHOWN = 10
#: Requests per ``submit_many`` call, and tasks read per Redis pipeline.
ENQUEUE_CHUNK = 500
READ_CHUNK = 1000

F_TOTAL = "total"
#: The tenant the batch belongs to (absent: ``internal``).
F_TENANT = "tenant"
F_CREATED = "created_at"
F_CANCELLED = "cancelled_at"

#: What a result line says of a task whose record and result have both expired.
MISSING = ErrorInfo(type="missing", message="the task's record and result have expired")


class BatchRefused(GenQueueError, ValueError):
    """Raised when a batch body is refused; nothing of it was enqueued."""

    error_type = "batch_refused"
    status_code = 422


class UnreadableBody(BatchRefused):
    """Raised when the body is not UTF-8 text."""

    status_code = 400


class UnsupportedMediaType(BatchRefused):
    """Raised when the Content-Type is neither a JSONL type nor ``application/json``."""

    status_code = 415


class BatchInvalid(BatchRefused):
    """Raised for invalid lines (each named by its number), an empty or too long batch."""


@dataclass(frozen=True)
class BatchLine:
    """One request of a batch. ``where`` names it in errors: ``line 3`` or ``request 3``."""

    where: str
    custom_id: str
    request: GenerationRequest


@dataclass(frozen=True)
class BatchRules:
    """What a batch line may be: the batch length, the default priority, known templates."""

    max_requests: int
    default_priority: int
    #: Template names a request may use; ``None`` accepts any (the worker decides).
    templates: frozenset[str] | None = None
    #: Endpoint names a request may use; ``None`` accepts any.
    endpoints: frozenset[str] | None = None
    #: The endpoints' kinds and fallbacks, to refuse ``params`` they would not take.
    endpoint_specs: Endpoints | None = None


class BatchState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class BatchCreated(BaseModel):
    batch_id: str
    status: BatchState = BatchState.QUEUED
    total: int


class BatchCounts(BaseModel):
    """Tasks of the batch in each state."""

    queued: int = 0
    running: int = 0
    retrying: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled


class BatchStatus(BaseModel):
    batch_id: str
    status: BatchState
    total: int
    counts: BatchCounts = Field(default_factory=BatchCounts)
    created_at: datetime | None = None


@dataclass(frozen=True)
class BatchResults:
    """``total`` lines to come from ``lines``, a chunk of JSON lines at a time."""

    total: int
    lines: AsyncIterator[str]
