"""A task's state changes in Redis: one script, one round trip, each
(``scripts/task_start.lua`` and ``scripts/task_end.lua``).

- :meth:`Lifecycle.begin`: a message was taken. Counts the delivery, reads the task's progress
  and any stored result, and writes Celery's ``STARTED`` state (what ``task_track_started``
  would write: the task sets it off and this script does it, without Celery's extra read).
- (A slot on the endpoint was granted: the same script claims the task as running here and
  counts the attempt; see :class:`worker.limits.guard.Claim`.)
- :meth:`Lifecycle.finish`: the task ended. Records the end, releases the running claim, writes
  Celery's ``SUCCESS`` result (Celery's own write of it is skipped: see
  :mod:`worker.tasks`), adds the entry of the completion stream
  (:mod:`worker.observability.completion_stream`), and
  releases the endpoint slot of a successful call and the message's unacked entries (so that
  neither costs a round trip of its own).

Celery's result key stays in Celery's format, so ``AsyncResult`` and Flower read it as theirs.

With a result Redis of its own (``GENQUEUE_RESULT_REDIS_URL``) the two Redis servers share no
transaction, and the order of the writes keeps a task from being called twice: the start reads
the result there before its script (a stored success is ended without a call) and writes
``STARTED`` after it; the end stores the success there first, idempotently, then runs its script.
A worker that dies between the two leaves a message that comes back, and whose start finds the
success.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from worker import keys, lua
from worker.contract import GenerationResult
from worker.delivery import records, script_replies
from worker.limits.guard import GrantedSlot, SlotOffer, SlotRelease
from worker.limits.script_replies import SlotAnswer
from worker.observability import completion_stream as events
from worker.redis_io.redis_outage import REDIS_DOWN
from worker.settings import DAY_S, default_of
from worker.tenancy.tenants import INTERNAL

log = logging.getLogger("genqueue.task")


@dataclass(frozen=True)
class Progress:
    """What the task's record says when a message of it is taken."""

    attempts: int
    deliveries: int
    first_attempt_at: float | None
    cancel_requested: bool
    stored_result: GenerationResult | None
    #: The endpoint the task moved to (fallback), and those it left, in order.
    endpoint: str | None = None
    tried: tuple[str, ...] = ()
    #: A serverless job the task waits for, and how often it was polled.
    job_id: str | None = None
    polls: int = 0
    #: The endpoint slot granted in passing (see :meth:`Lifecycle.begin`).
    granted: GrantedSlot | None = None


@dataclass(frozen=True)
class Finished:
    cancel_requested: bool
    attempts: int
    #: When the task was created (the record's ``created_at``), if the record knows.
    created_at: str | None


@dataclass(frozen=True)
class BrokerAcks:
    """Where kombu keeps a message until its ack, and what to tell it once the end script
    removed it (:func:`worker.delivery.broker.settle`)."""

    unacked_key: str
    unacked_index_key: str
    settled: Callable[[str], None]


@dataclass(frozen=True)
class Ending:
    """How a task ended, as :meth:`Lifecycle.finish` records it."""

    #: ``succeeded``, ``failed`` or ``cancelled``.
    status: str
    result: dict[str, Any] | None = None
    error_type: str = ""
    error_message: str = ""
    #: Whose usage it adds to, and the endpoint it used last (``None``: it never reached one).
    tenant: str = INTERNAL
    endpoint: str | None = None


#: The endpoint usage is counted under when the task never reached one (an invalid request).
NO_ENDPOINT = "-"
#: How long usage is kept unless told (``GENQUEUE_USAGE_RETENTION_DAYS``).
USAGE_TTL_S: int = default_of("usage_retention_days") * DAY_S


def error_json(error_type: str, message: str) -> str:
    """A task's error as its record keeps it (``error``, ``last_error``)."""
    return json.dumps({"type": error_type, "message": message})


#: The names the end script gives :func:`usage_keys` and :func:`usage_args`, in their order.
USAGE_KEYS = ("usage_key", "usage_tenants_key", "usage_totals_key", "reserved_key")
USAGE_ARGS = ("tenant", "endpoint", "prompt_tokens", "completion_tokens", "gpu_ms", "usage_ttl_s")


def usage_args(ending: Ending, usage_ttl_s: int) -> list[str | int]:
    """The end script's usage arguments: tenant, endpoint, tokens, GPU-milliseconds, TTL."""
    result = ending.result or {}
    usage = result.get("usage") or {}
    endpoint = result.get("endpoint") or ending.endpoint or NO_ENDPOINT
    return [
        ending.tenant,
        endpoint,
        int(usage.get("prompt_tokens") or 0),
        int(usage.get("completion_tokens") or 0),
        int(result.get("latency_ms") or 0),
        usage_ttl_s,
    ]


def usage_keys(tenant: str) -> list[str]:
    """The end script's usage keys for ``tenant``, today (UTC)."""
    day = datetime.now(UTC).date().isoformat()
    return [
        keys.usage(tenant, day),
        keys.usage_tenants(day),
        keys.usage_totals(),
        keys.reserved_tokens(tenant),
    ]


def celery_meta(
    task_id: str, status: str, result: Any, done: bool, done_at: datetime | None = None
) -> str:
    """Celery's result meta, as its Redis backend stores it (``result_extended`` off); a final
    one is dated ``done_at`` (now, unless given), to the millisecond as the records are."""
    return json.dumps(
        {
            "status": status,
            "result": result,
            "traceback": None,
            "children": [],
            "date_done": (done_at or records.utcnow_ms()).isoformat() if done else None,
            "task_id": task_id,
        }
    )


class Lifecycle:
    """The scripts of a task's start and end, with their arguments and answers typed.

    :param client: the Redis client of the task records (and Celery's results).
    :param record_ttl_s: how long a record and a result are kept.
    :param events_maxlen: the completion stream's approximate length cap.
    :param usage_ttl_s: how long a tenant's usage of a day is kept.
    :param results: a client on the Redis of Celery's results when it is not ``client``'s
        (``GENQUEUE_RESULT_REDIS_URL``); ``None``: they live in ``client``'s.
    """

    def __init__(
        self,
        client: redis.Redis,
        record_ttl_s: int,
        events_maxlen: int,
        broker: BrokerAcks | None = None,
        usage_ttl_s: int = USAGE_TTL_S,
        results: redis.Redis | None = None,
    ) -> None:
        self._client = client
        self._record_ttl_s = record_ttl_s
        self._usage_ttl_s = usage_ttl_s
        self._events_maxlen = events_maxlen
        self._broker = broker
        self._begin = lua.named(client, "worker.delivery", "task_start")
        self._finish = lua.named(client, "worker.delivery", "task_end")
        self._results = results
        self._store_result = (
            lua.named(results, "worker.delivery", "store_result") if results else None
        )

    def begin(
        self,
        task_id: str,
        delivery_round: int,
        hostname: str,
        offer: SlotOffer | None = None,
        max_deliveries: int = 0,
    ) -> Progress:
        """Count the delivery (of Celery's retry round ``delivery_round``), read the progress,
        and write ``STARTED`` with ``hostname`` (the worker's name), as Celery does; try for
        the slot of ``offer`` in passing (see ``scripts/task_start.lua``)."""
        started = celery_meta(
            task_id, "STARTED", {"pid": os.getpid(), "hostname": hostname}, done=False
        )
        result_key = keys.celery_result(task_id)
        stored: GenerationResult | None = None
        result_apart = ""
        if self._results is not None:
            meta_there: bytes | None = self._results.get(result_key)  # type: ignore[assignment]
            stored = stored_result(meta_there)
            result_apart = "succeeded" if stored is not None else "pending"
        script_keys: dict[str, Any] = {
            "record_key": keys.task_record(task_id),
            "result_key": result_key,
        }
        args: dict[str, Any] = {
            "created_at": records.utcnow_iso(),
            "deliveries_field": f"{records.F_DELIVERIES}:{delivery_round}",
            "record_ttl_s": self._record_ttl_s,
            "result_ttl_s": self._record_ttl_s,
            "started_meta": started,
            "result_apart": result_apart,
        }
        if offer is not None:
            script_keys["slot_offer_keys"] = offer.keys
            args |= {"max_deliveries": max_deliveries, "slot_offer_args": offer.args}
        start = script_replies.task_start(self._begin(keys=script_keys, args=args))
        granted = None
        if offer is not None and start.slot and start.slot.answer is SlotAnswer.TAKEN:
            assert start.slot.attempts is not None  # a claim's slot counts its attempt
            granted = GrantedSlot(offer, *start.slot.attempts)
        if self._results is None:
            stored = stored_result(start.meta)
        elif stored is None and not start.cancel_requested:
            self._mark_started(task_id, result_key, started)
        return Progress(
            attempts=int(start.attempts or 0),
            deliveries=start.deliveries,
            first_attempt_at=float(start.first_attempt_at) if start.first_attempt_at else None,
            cancel_requested=bool(start.cancel_requested),
            stored_result=stored,
            endpoint=start.endpoint,
            tried=tuple(start.endpoints_tried.split(",")) if start.endpoints_tried else (),
            job_id=start.job_id,
            polls=int(start.polls or 0),
            granted=granted,
        )

    def move(self, task_id: str, endpoint: str, tried: list[str]) -> None:
        """Note on the record that the task moves to ``endpoint`` (a fallback), having tried
        the endpoints ``tried``: its next start reads them (``scripts/task_start.lua``)."""
        self._client.hset(
            keys.task_record(task_id),
            mapping={records.F_ENDPOINT: endpoint, records.F_TRIED: ",".join(tried)},
        )

    def note_error(self, task_id: str, error_type: str, message: str) -> None:
        """Note on the record why the task's attempt failed, before it is retried: the same
        ``{type, message}`` as the final error (:func:`finish`)."""
        self._client.hset(
            keys.task_record(task_id), records.F_LAST_ERROR, error_json(error_type, message)
        )

    def add_call_time(self, tenant: str, endpoint: str, gpu_ms: int) -> None:
        """Add the duration of a call that gave no result (it failed, or was cancelled) to
        ``tenant``'s usage on ``endpoint``, now: the GPU spent it whatever becomes of the task.
        The call that gives the result is counted by the end script."""
        if gpu_ms <= 0:
            return
        usage_key, tenants_key, totals_key, _ = usage_keys(tenant)
        pipe = self._client.pipeline(transaction=True)
        pipe.hincrby(usage_key, f"{endpoint}:gpu_ms", gpu_ms)
        pipe.expire(usage_key, self._usage_ttl_s)
        pipe.sadd(tenants_key, tenant)
        pipe.expire(tenants_key, self._usage_ttl_s)
        pipe.hincrby(totals_key, f"{tenant}|{endpoint}|gpu_ms", gpu_ms)
        pipe.expire(totals_key, self._usage_ttl_s)
        pipe.execute()

    def _mark_started(self, task_id: str, result_key: str, meta: str) -> None:
        """Write ``STARTED`` to the result Redis (never over a success). It only informs
        (Flower, ``AsyncResult.state``): when that Redis is away the task goes on without it,
        its start being counted already."""
        assert self._store_result is not None
        try:
            self._store_result(
                keys={"result_key": result_key},
                args={"meta": meta, "ttl_s": self._record_ttl_s, "success": "SUCCESS"},
            )
        except REDIS_DOWN as err:
            log.warning("task %s: its STARTED state was not stored (%s)", task_id, err)

    def finish(
        self,
        task_id: str,
        ending: Ending,
        claim_token: str | None,
        slot_release: SlotRelease | None = None,
        message_tag: str | None = None,
        queue_list: str = "",
    ) -> Finished:
        """Record the end; release the running claim ``claim_token`` and the endpoint slot
        ``slot_release`` (handed off by the guard, settling its turn's cost where the endpoint
        is fair by tokens, in the backlog of ``queue_list`` too), and acknowledge the message
        ``message_tag`` when the end is final, in the same round trip."""
        error = ""
        if ending.status != "succeeded":
            error = error_json(ending.error_type, ending.error_message)
        # One moment for the record's finished_at and the result's date_done: a status read
        # between the two writes (results apart) says the same time as one read after.
        ended = records.utcnow_ms()
        meta = ""
        if ending.result is not None:
            meta = celery_meta(task_id, "SUCCESS", ending.result, done=True, done_at=ended)
        store_apart = self._store_result if meta else None
        script_keys: dict[str, Any] = {
            "record_key": keys.task_record(task_id),
            "events_key": events.EVENTS_STREAM,
            "result_key": keys.celery_result(task_id),
            "running_key": keys.running(task_id),
            "unacked_index_key": self._broker.unacked_index_key
            if self._broker
            else keys.UNACKED_INDEX,
            "unacked_key": self._broker.unacked_key if self._broker else keys.UNACKED,
            "inbox_key": keys.inbox(),
            **dict(zip(USAGE_KEYS, usage_keys(ending.tenant), strict=True)),
        }
        tag = message_tag if self._broker is not None and message_tag else ""
        release_args: dict[str, Any] = {}
        if slot_release is not None:
            script_keys["slot_release_keys"] = slot_release.keys
            release_args["slot_release_args"] = slot_release.args
            if slot_release.settle:
                release_args["slot_release_args"] += (*slot_release.settle, queue_list)
        try:
            if store_apart is not None:
                # First, and idempotent: a success stored twice (a redelivered message) is one.
                store_apart(
                    keys={"result_key": keys.celery_result(task_id)},
                    args={"meta": meta, "ttl_s": self._record_ttl_s, "success": "SUCCESS"},
                )
            answer = self._finish(
                keys=script_keys,
                args={
                    "record_ttl_s": self._record_ttl_s,
                    "events_maxlen": self._events_maxlen,
                    "task_id": task_id,
                    "status": ending.status,
                    "error_type": ending.error_type,
                    "finished_at": records.iso(ended),
                    "error_json": error,
                    "result_ttl_s": self._record_ttl_s,
                    "success_meta": "" if store_apart is not None else meta,
                    "success_apart": "1" if store_apart is not None else "",
                    "claim_token": claim_token or "",
                    "delivery_tag": tag,
                    **dict(zip(USAGE_ARGS, usage_args(ending, self._usage_ttl_s), strict=True)),
                    **release_args,
                },
            )
        except REDIS_DOWN:
            raise  # the caller rides the outage out, and asks again with the same release
        except BaseException:
            if slot_release is not None:
                slot_release.guard.release(slot_release)  # it lapses if Redis is away
            raise
        end = script_replies.task_end(answer)
        if slot_release is not None:
            slot_release.guard.settle(slot_release)
        cancelled_success = ending.status == "succeeded" and end.cancel_requested
        if tag and self._broker is not None and not cancelled_success:
            self._broker.settled(tag)
        return Finished(end.cancel_requested, end.attempts, end.created_at)


def stored_result(meta: bytes | None) -> GenerationResult | None:
    """The result in Celery's result meta, if the task succeeded."""
    if not meta:
        return None
    try:
        stored = json.loads(meta)
    except ValueError:
        return None
    if stored.get("status") != "SUCCESS" or not isinstance(stored.get("result"), dict):
        return None
    return GenerationResult.model_validate(stored["result"])
