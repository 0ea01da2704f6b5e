"""Batch jobs: many requests sent as one JSONL file, tracked and read back together.

- :mod:`~api_producer.batches.models`: lines, rules, states, answers and refusals;
- :mod:`~api_producer.batches.parsing`: the body read a piece at a time, each line checked;
- :mod:`~api_producer.batches.storage`: the batch in Redis, read and cancelled through its tasks.
"""

from __future__ import annotations

from api_producer.batches.models import (
    CUSTOM_ID_MAX_CHARS,
    ENQUEUE_CHUNK,
    JSON_TYPE,
    JSONL_TYPES,
    MISSING,
    PROBLEMS_SHOWN,
    READ_CHUNK,
    BatchCounts,
    BatchCreated,
    BatchInvalid,
    BatchLine,
    BatchRefused,
    BatchResults,
    BatchRules,
    BatchState,
    BatchStatus,
    UnreadableBody,
    UnsupportedMediaType,
)
from api_producer.batches.parsing import (
    JSON_GROUP,
    BatchParser,
    Item,
    check_webhooks,
    describe_validation_error,
    parse_batch,
)
from api_producer.batches.storage import BatchStore, batch_state, result_line, task_state

__all__ = [
    "CUSTOM_ID_MAX_CHARS",
    "ENQUEUE_CHUNK",
    "JSONL_TYPES",
    "JSON_GROUP",
    "JSON_TYPE",
    "MISSING",
    "PROBLEMS_SHOWN",
    "READ_CHUNK",
    "BatchCounts",
    "BatchCreated",
    "BatchInvalid",
    "BatchLine",
    "BatchParser",
    "BatchRefused",
    "BatchResults",
    "BatchRules",
    "BatchState",
    "BatchStatus",
    "BatchStore",
    "Item",
    "UnreadableBody",
    "UnsupportedMediaType",
    "batch_state",
    "check_webhooks",
    "describe_validation_error",
    "parse_batch",
    "result_line",
    "task_state",
]
