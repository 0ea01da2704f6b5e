"""Finds tasks whose message was lost and sends them again.

Celery's Redis transport pops a message with BRPOP and only then records it as unacknowledged:
a worker killed between the two loses the message (and Redis may hand a popped message to a
connection that is already dead). genqueue's own records say what was accepted, so a sweep can
tell a lost task from a waiting one: nothing in the queues, its message in no worker's
unacknowledged set, no running claim, no final result, and accepted long enough ago that the
visibility timeout has had its chance. Such a task is sent again under the same id; if a copy
turns up after all, the running claim and the stored-result check keep the endpoint from being
called twice for it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from worker import keys
from worker.contract import TASK_NAME
from worker.delivery import backlog, records
from worker.observability.flower_summaries import NO_ARGS, payload_summary

log = logging.getLogger(__name__)

#: Candidates looked at per sweep.
BATCH = 200
_FINAL = (b'"SUCCESS"', b'"FAILURE"', b'"REVOKED"')
_RESEND_FIELDS = (records.F_PAYLOAD, records.F_QUEUE, records.F_PRIORITY)


def _unacked_task_ids(client: redis.Redis, unacked_key: str) -> set[str]:
    ids = set()
    for raw in client.hvals(unacked_key):  # type: ignore[union-attr]
        try:
            ids.add(json.loads(raw)[0]["headers"]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            continue
    return ids


def sweep(
    client: redis.Redis,
    send: Callable[[str, dict[str, Any], str, int], None],
    queues: Iterable[str],
    unacked_key: str,
    grace_s: float,
    retention_s: int,
    results: redis.Redis | None = None,
) -> list[str]:
    """One sweep; the ids of the tasks sent again. Does nothing while the queues hold work.

    ``results``: a client on the Redis of Celery's results, when not ``client``'s (a task
    whose final state is stored there is not lost).
    """
    now = time.time()
    client.zremrangebyscore(keys.inbox(), "-inf", now - retention_s)
    lists = keys.queue_lists(queues)
    pipe = client.pipeline(transaction=False)
    for key in lists:
        pipe.llen(key)
    pipe.execute_command(*backlog.size_command(lists))
    *lengths, sorted_out = pipe.execute()
    if sum(lengths) or backlog.size_of(sorted_out):
        return []  # a backlog (in the queues' lists or sorted by tenant): not lost
    members: list[bytes] = client.zrangebyscore(  # type: ignore[assignment]
        keys.inbox(), "-inf", now - grace_s, 0, BATCH
    )
    candidates = [member.decode() for member in members]
    if not candidates:
        return []
    in_flight = _unacked_task_ids(client, unacked_key)
    metas: list[bytes | None] = (results or client).mget(  # type: ignore[assignment]
        [keys.celery_result(task_id) for task_id in candidates]
    )
    pipe = client.pipeline(transaction=False)
    for task_id in candidates:
        pipe.exists(keys.running(task_id))
        pipe.hmget(keys.task_record(task_id), *_RESEND_FIELDS)
    answers = pipe.execute()
    resent = []
    for index, task_id in enumerate(candidates):
        meta = metas[index]
        running, (payload, queue, priority) = answers[index * 2 : index * 2 + 2]
        if (meta and any(state in meta for state in _FINAL)) or payload is None:
            client.zrem(keys.inbox(), task_id)
            continue
        if running or task_id in in_flight:
            continue
        send(task_id, json.loads(payload), queue.decode(), int(priority or 0))
        client.zadd(keys.inbox(), {task_id: time.time()})
        log.warning("task %s had no message left anywhere; sent it again", task_id)
        resent.append(task_id)
    return resent


def sender(app: Any) -> Callable[[str, dict[str, Any], str, int], None]:
    """Sends a task again through ``app`` (the worker's Celery app)."""

    def send(task_id: str, payload: dict[str, Any], queue: str, priority: int) -> None:
        app.send_task(
            TASK_NAME,
            kwargs={"request": payload},
            task_id=task_id,
            queue=queue,
            priority=priority,
            argsrepr=NO_ARGS,
            kwargsrepr=payload_summary(payload),
        )

    return send
