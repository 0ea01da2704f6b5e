"""Batch jobs: many requests sent as one JSONL file, tracked and read back together.

A batch is two Redis keys, both kept for ``GENQUEUE_RESULT_TTL_S`` like its tasks:

- ``genqueue:batch:<id>``, a hash: ``created_at``, ``total`` and, once cancelled,
  ``cancelled_at``;
- ``genqueue:batch:<id>:tasks``, a list of ``<task_id> <custom_id>`` in input order.

Its tasks are ordinary genqueue tasks (enqueued with :meth:`DirectProducer.submit_many`, a chunk
at a time, at a low priority unless a line sets one), so a batch's state is read from its tasks'
records and Celery results, never stored twice.

Refusals, each with the HTTP status it is answered with::

    BatchRefused
    ├── UnreadableBody         400  the body is not UTF-8 text
    ├── UnsupportedMediaType   415  neither JSONL nor JSON
    └── BatchInvalid           422  a bad line (named by its number), too many lines, ...
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel, Field, ValidationError

from api_producer.producers.direct import DirectProducer, EnqueueError, describe_redis_error
from api_producer.store import add_cancel
from worker import connections, keys
from worker.contract import ErrorInfo, GenerationRequest, TaskState, unicode_problem
from worker.delivery import records
from worker.errors import GenQueueError
from worker.settings import Settings
from worker.webhooks.sender import WebhookRefused, check_webhook_url

#: Media types of a JSONL body; ``application/json`` is ``{"requests": [...]}``.
JSONL_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/x-jsonlines"})
JSON_TYPE = "application/json"
CUSTOM_ID_MAX_CHARS = 512
#: Bad lines named in one 422; the rest are counted.
PROBLEMS_SHOWN = 10
#: Requests per ``submit_many`` call, and tasks read per Redis pipeline.
ENQUEUE_CHUNK = 500
READ_CHUNK = 1000

F_TOTAL = "total"
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


# --------------------------------------------------------------------------- parsing


#: Requests of a JSON body validated between two rate-limit charges.
JSON_GROUP = 1000
_DECODER = json.JSONDecoder()
_JSON_HEAD = re.compile(r'\s*\{\s*"requests"\s*:\s*\[\s*')
_SPACE = re.compile(r"\s*")

#: ``(where, value)``: a JSONL line still undecoded (bytes), or a decoded JSON element.
Item = tuple[str, Any]


class BatchParser:
    """A batch body read a piece at a time; nothing of it is kept but the validated requests.

    A JSONL body is split into lines as it arrives (:meth:`feed`); a line is decoded and
    validated only when :meth:`check` is given it, so the caller can charge the rate limit in
    between. The line past ``rules.max_requests`` refuses the batch before the rest is read.
    A JSON body (``{"requests": [...]}``) is held until :meth:`end`, then decoded an element at
    a time. Raises :class:`BatchRefused` subclasses.
    """

    def __init__(self, content_type: str, rules: BatchRules) -> None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type not in JSONL_TYPES and media_type != JSON_TYPE:
            allowed = ", ".join(sorted(JSONL_TYPES | {JSON_TYPE}))
            raise UnsupportedMediaType(f"send the batch as one of {allowed}")
        self._rules = rules
        self._jsonl = media_type != JSON_TYPE
        self._pending = bytearray()
        self._number = 0
        self._count = 0
        self.lines: list[BatchLine] = []
        self._problems: list[str] = []
        self._problem_count = 0
        self._first_seen: dict[str, str] = {}

    def feed(self, chunk: bytes) -> list[Item]:
        """The complete, non-blank JSONL lines ``chunk`` ends; none for a JSON body."""
        self._pending += chunk
        if not self._jsonl:
            return []
        cut = self._pending.rfind(b"\n")
        if cut < 0:
            return []
        # Split on "\n" only: JSON strings may hold U+2028 and others splitlines() cuts at.
        complete = bytes(self._pending[:cut])
        del self._pending[: cut + 1]
        return self._jsonl_items(complete.split(b"\n"))

    def end(self) -> Iterator[list[Item]]:
        """What is left once the body is read: the last JSONL line, or the JSON body's requests."""
        rest, self._pending = bytes(self._pending), bytearray()
        if self._jsonl:
            items = self._jsonl_items([rest])
            if items:
                yield items
            return
        elements = _json_elements(_utf8(rest))
        while group := list(itertools.islice(elements, JSON_GROUP)):
            self._count_requests(len(group), group[-1][0])
            yield group

    def check(self, items: list[Item]) -> None:
        """Decode and validate ``items``: the valid join :attr:`lines`, the others are noted."""
        for where, value in items:
            try:
                line = _line(where, _decoded(value), self._rules)
            except BatchInvalid as err:
                self._problem(f"{where}: {err}")
                continue
            earlier = self._first_seen.setdefault(line.custom_id, where)
            if earlier != where:
                self._problem(f"{where}: custom_id {line.custom_id!r} is already on {earlier}")
                continue
            if not self._problems:
                self.lines.append(line)

    def result(self) -> list[BatchLine]:
        """Every request, validated; :class:`BatchInvalid` naming the bad lines."""
        if self._problems:
            shown = "; ".join(self._problems)
            more = self._problem_count - len(self._problems)
            raise BatchInvalid(shown + (f" (and {more} more invalid lines)" if more > 0 else ""))
        if not self.lines:
            raise BatchInvalid("the batch holds no requests")
        return self.lines

    def _jsonl_items(self, raw_lines: list[bytes]) -> list[Item]:
        items: list[Item] = []
        for raw in raw_lines:
            self._number += 1
            if raw.strip():
                self._count_requests(1, f"line {self._number}")
                items.append((f"line {self._number}", raw))
        return items

    def _count_requests(self, count: int, last: str) -> None:
        self._count += count
        limit = self._rules.max_requests
        if self._count > limit:
            raise BatchInvalid(
                f"a batch holds at most {limit} requests, this one has more ({last} is past that)"
            )

    def _problem(self, text: str) -> None:
        self._problem_count += 1
        self.lines.clear()  # an invalid batch is refused whole: keep no requests
        if len(self._problems) < PROBLEMS_SHOWN:
            self._problems.append(text)


def parse_batch(body: bytes, content_type: str, rules: BatchRules) -> list[BatchLine]:
    """Every request of the body, validated; :class:`BatchRefused` naming the bad lines."""
    parser = BatchParser(content_type, rules)
    parser.check(parser.feed(body))
    for items in parser.end():
        parser.check(items)
    return parser.result()


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableBody("the body is not UTF-8 text") from None


def _decoded(value: Any) -> Any:
    """A JSONL line's JSON value (or the :class:`BatchInvalid` saying it is not JSON)."""
    if not isinstance(value, bytes):
        return value
    try:
        return json.loads(_utf8(value))
    except json.JSONDecodeError as err:
        return BatchInvalid(f"not JSON ({err.msg} at column {err.colno})")


def _json_elements(text: str) -> Iterator[Item]:
    """``{"requests": [...]}``'s elements, decoded one at a time (never the whole tree)."""
    head = _JSON_HEAD.match(text)
    if head is None:
        yield from _json_items(text)  # spelled another way, or not a batch: the slow, exact path
        return
    pos = head.end()
    if text.startswith("]", pos):
        pos += 1
    else:
        pos = yield from _json_array(text, pos)
    if text[pos:].strip() != "}":
        raise BatchInvalid('a JSON batch is an object {"requests": [...]} and nothing else')


def _json_array(text: str, pos: int) -> Generator[Item, None, int]:
    """The elements of the array at ``pos`` (just past its ``[``); returns the end's position."""
    for number in itertools.count(1):
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise BatchInvalid(f"the body is not JSON ({err.msg} at line {err.lineno})") from None
        yield f"request {number}", value
        pos = _skip_space(text, pos)
        if not text.startswith(",", pos):
            break
        pos = _skip_space(text, pos + 1)
    if not text.startswith("]", pos):
        raise BatchInvalid("the body is not JSON (expecting ',' or ']' after a request)")
    return pos + 1


def _skip_space(text: str, pos: int) -> int:
    match = _SPACE.match(text, pos)
    return match.end() if match else pos


def _json_items(text: str) -> list[Item]:
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise BatchInvalid(f"the body is not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(body, dict) or set(body) != {"requests"}:
        raise BatchInvalid('a JSON batch is an object {"requests": [...]} and nothing else')
    requests_ = body["requests"]
    if not isinstance(requests_, list):
        raise BatchInvalid("requests must be a list")
    return [(f"request {number}", value) for number, value in enumerate(requests_, start=1)]


def _line(where: str, value: Any, rules: BatchRules) -> BatchLine:
    if isinstance(value, BatchInvalid):
        raise value
    if not isinstance(value, dict):
        raise BatchInvalid("a request must be a JSON object")
    custom_id = value.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise BatchInvalid("custom_id: a non-empty string is required")
    if len(custom_id) > CUSTOM_ID_MAX_CHARS:
        raise BatchInvalid(f"custom_id: longer than {CUSTOM_ID_MAX_CHARS} characters")
    unreadable = unicode_problem(custom_id, "custom_id")
    if unreadable is not None:
        raise BatchInvalid(unreadable)
    fields = {k: v for k, v in value.items() if k != "custom_id"}
    fields.setdefault("priority", rules.default_priority)
    try:
        request = GenerationRequest.model_validate(fields)
    except ValidationError as err:
        raise BatchInvalid(describe_validation_error(err)) from None
    _check_request(request, rules)
    return BatchLine(where=where, custom_id=custom_id, request=request)


def _check_request(request: GenerationRequest, rules: BatchRules) -> None:
    """The checks ``POST /v1/tasks`` makes beyond the model: deadline and template."""
    if request.deadline is not None and request.deadline <= datetime.now(UTC):
        raise BatchInvalid("the deadline is already in the past")
    if rules.templates is not None and request.template not in rules.templates:
        known = ", ".join(sorted(rules.templates))
        raise BatchInvalid(f"unknown template {request.template!r} (known: {known})")
    endpoints = rules.endpoints
    if request.endpoint is not None and endpoints is not None and request.endpoint not in endpoints:
        raise BatchInvalid(f"unknown endpoint {request.endpoint!r}")


def describe_validation_error(err: ValidationError) -> str:
    """``field.path: message`` for each problem, never the input itself."""
    parts = []
    for problem in err.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in problem["loc"])
        parts.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    return "; ".join(parts)


def check_webhooks(lines: Sequence[BatchLine], settings: Settings) -> None:
    """Refuse a ``webhook_url`` this server may not post to (resolves host names: blocking)."""
    verdicts: dict[str, str | None] = {}
    secret = settings.webhook_secret
    for line in lines:
        url = line.request.webhook_url
        if url is None:
            continue
        if secret is None or not secret.get_secret_value():
            raise BatchInvalid(
                f"{line.where}: webhook_url: webhooks are off on this server "
                "(no GENQUEUE_WEBHOOK_SECRET)"
            )
        if url not in verdicts:
            try:
                check_webhook_url(url, settings.webhook_allowlist)
                verdicts[url] = None
            except WebhookRefused as err:
                verdicts[url] = str(err)
        if verdicts[url] is not None:
            raise BatchInvalid(f"{line.where}: webhook_url: {verdicts[url]}")


# --------------------------------------------------------------------------- task states


def task_state(raw_record: dict[Any, Any], raw_meta: bytes | str | None) -> TaskState:
    """The state ``GET /v1/tasks/{id}`` reports (:func:`worker.delivery.records.state_from`).

    A task whose record and result have both expired counts as failed (``missing``).
    """
    if not raw_record and raw_meta is None:
        return TaskState.FAILED
    return records.state_from(raw_record, raw_meta)


def batch_state(counts: BatchCounts, total: int, cancel_requested: bool) -> BatchState:
    if cancel_requested:
        return BatchState.CANCELLED
    if counts.done >= total:
        return BatchState.COMPLETED
    if counts.queued == total:
        return BatchState.QUEUED
    return BatchState.RUNNING


def result_line(
    custom_id: str, task_id: str, raw_record: dict[Any, Any], raw_meta: bytes | None
) -> str:
    """One line of ``GET /v1/batches/{id}/results``: custom_id, task_id, status, result, error."""
    line: dict[str, Any] = {"custom_id": custom_id, "task_id": task_id}
    if not raw_record and raw_meta is None:
        line.update(status=TaskState.FAILED.value, result=None, error=MISSING.model_dump())
    else:
        status = records.status_from(task_id, raw_record, raw_meta)
        line.update(
            status=status.status.value,
            result=status.result.model_dump(mode="json") if status.result else None,
            error=status.error.model_dump(mode="json") if status.error else None,
        )
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _entry(raw: bytes | str) -> tuple[str, str]:
    task_id, _, custom_id = _text(raw).partition(" ")
    return task_id, custom_id


# --------------------------------------------------------------------------- the store


class BatchStore:
    """Batches in Redis: created from validated lines, read and cancelled through their tasks.

    :param producer: enqueues the tasks, :data:`ENQUEUE_CHUNK` at a time.
    :param client: an asyncio Redis client on genqueue's Redis.
    :param result_ttl_s: how long a batch is kept (as long as its tasks' records).
    """

    def __init__(self, producer: DirectProducer, client: aioredis.Redis, result_ttl_s: int) -> None:
        self._producer = producer
        self._redis = client
        self._ttl_s = result_ttl_s

    @classmethod
    def from_settings(cls, settings: Settings, producer: DirectProducer) -> BatchStore:
        client = connections.async_client(settings, max_connections=64)
        return cls(producer, client, settings.result_ttl_s)

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def create(self, lines: Sequence[BatchLine]) -> BatchCreated:
        """Enqueue every line's task and store the batch, or leave nothing runnable behind.

        Raises :class:`EnqueueError` when Redis fails midway; the tasks already sent are
        cancelled (they never reach the endpoint unless a worker took them meanwhile).
        """
        batch_id = f"batch_{uuid.uuid4().hex}"
        created_at = records.utcnow_iso()
        task_ids: list[str] = []
        try:
            for start in range(0, len(lines), ENQUEUE_CHUNK):
                chunk = [line.request for line in lines[start : start + ENQUEUE_CHUNK]]
                accepted = await asyncio.to_thread(self._producer.submit_many, chunk)
                task_ids += accepted.task_ids
            await self._store(batch_id, created_at, lines, task_ids)
        except BaseException as err:
            await asyncio.shield(self._withdraw(task_ids))
            if isinstance(err, redis.RedisError | OSError):
                reason = describe_redis_error(err)
                raise EnqueueError(f"could not store the batch: {reason}") from err
            raise
        return BatchCreated(batch_id=batch_id, total=len(lines))

    async def status(self, batch_id: str) -> BatchStatus | None:
        """Counts by state, read from every task; ``None`` for an unknown batch."""
        info = await self._info(batch_id)
        if info is None:
            return None
        total = int(info[F_TOTAL])
        tally: Counter[TaskState] = Counter()
        async for entries in self._entries(batch_id, total):
            replies = await self._read([task_id for task_id, _ in entries])
            tally.update(task_state(record, meta) for record, meta in replies)
        counts = BatchCounts(**{state.value: n for state, n in tally.items()})
        return BatchStatus.model_validate(
            {
                "batch_id": batch_id,
                "status": batch_state(counts, total, F_CANCELLED in info),
                "total": total,
                "counts": counts,
                "created_at": info.get(F_CREATED),
            }
        )

    async def results(self, batch_id: str) -> BatchResults | None:
        """The result lines in input order, a chunk of lines at a time; ``None`` if unknown."""
        info = await self._info(batch_id)
        if info is None:
            return None
        total = int(info[F_TOTAL])
        return BatchResults(total=total, lines=self._result_chunks(batch_id, total))

    async def cancel(self, batch_id: str) -> BatchStatus | None:
        """Cancel every task not final yet, as ``DELETE /v1/tasks/{id}`` does, without waiting."""
        info = await self._info(batch_id)
        if info is None:
            return None
        cancelled = 0
        async for entries in self._entries(batch_id, int(info[F_TOTAL])):
            cancelled += await self._cancel_tasks([task_id for task_id, _ in entries])
        if cancelled:
            await self._redis.hsetnx(keys.batch(batch_id), F_CANCELLED, records.utcnow_iso())
        return await self.status(batch_id)

    async def _result_chunks(self, batch_id: str, total: int) -> AsyncIterator[str]:
        async for entries in self._entries(batch_id, total):
            replies = await self._read([task_id for task_id, _ in entries])
            yield "".join(
                result_line(custom_id, task_id, record, meta)
                for (task_id, custom_id), (record, meta) in zip(entries, replies, strict=True)
            )

    async def _info(self, batch_id: str) -> dict[str, str] | None:
        raw = await self._redis.hgetall(keys.batch(batch_id))
        if not raw:
            return None
        info = {_text(key): _text(value) for key, value in raw.items()}
        return info if F_TOTAL in info else None

    async def _entries(self, batch_id: str, total: int) -> AsyncIterator[list[tuple[str, str]]]:
        """``(task_id, custom_id)`` in input order, :data:`READ_CHUNK` at a time."""
        list_key = keys.batch_tasks(batch_id)
        for start in range(0, total, READ_CHUNK):
            raw = await self._redis.lrange(list_key, start, start + READ_CHUNK - 1)
            if not raw:
                return  # expired meanwhile
            yield [_entry(item) for item in raw]

    async def _read(self, task_ids: Sequence[str]) -> list[tuple[dict[Any, Any], bytes | None]]:
        """Each task's record and Celery result, in one pipeline."""
        pipe = self._redis.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hgetall(keys.task_record(task_id))
            pipe.get(keys.celery_result(task_id))
        replies = await pipe.execute()
        return list(zip(replies[0::2], replies[1::2], strict=True))

    async def _store(
        self, batch_id: str, created_at: str, lines: Sequence[BatchLine], task_ids: list[str]
    ) -> None:
        entries = [
            f"{task_id} {line.custom_id}" for task_id, line in zip(task_ids, lines, strict=True)
        ]
        list_key = keys.batch_tasks(batch_id)
        pipe = self._redis.pipeline(transaction=True)
        for start in range(0, len(entries), READ_CHUNK):
            pipe.rpush(list_key, *entries[start : start + READ_CHUNK])
        pipe.expire(list_key, self._ttl_s)
        # The hash last: a batch is found only once its task list is complete.
        pipe.hset(keys.batch(batch_id), mapping={F_CREATED: created_at, F_TOTAL: len(entries)})
        pipe.expire(keys.batch(batch_id), self._ttl_s)
        await pipe.execute()

    async def _cancel_tasks(self, task_ids: Sequence[str]) -> int:
        """Cancel the tasks not final yet (:func:`api_producer.store.add_cancel`); how many."""
        replies = await self._read(task_ids)
        pipe = self._redis.pipeline(transaction=False)
        cancelled = 0
        for task_id, (record, meta) in zip(task_ids, replies, strict=True):
            state = task_state(record, meta)
            if state.is_final:
                continue
            cancelled += 1
            add_cancel(pipe, task_id, state, self._ttl_s)
        if cancelled:
            await pipe.execute()
        return cancelled

    async def _withdraw(self, task_ids: Sequence[str]) -> None:
        """Cancel the tasks of a batch that could not be accepted whole.

        Only the cancel flag, as :meth:`DirectProducer._withdraw` does: a worker drops a
        flagged task before calling the endpoint, and discards the result of one it ran.
        """
        try:
            for start in range(0, len(task_ids), READ_CHUNK):
                pipe = self._redis.pipeline(transaction=False)
                for task_id in task_ids[start : start + READ_CHUNK]:
                    pipe.hset(keys.task_record(task_id), records.F_CANCEL, "1")
                await pipe.execute()
        except (redis.RedisError, OSError):
            pass  # Redis is gone too: the records expire by themselves.

