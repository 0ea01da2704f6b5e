"""The replies of the delivery's Lua scripts (``worker/delivery/scripts/``), decoded in one
place: what each header's ``Returns`` line says, as values a caller reads by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kombu.utils.encoding import bytes_to_str

from worker.limits import script_replies as limits_replies
from worker.limits.script_replies import SlotReply


@dataclass(frozen=True)
class Fetched:
    """One message ``fetch.lua`` took: the queue list it came from, and its message and
    delivery tag (both ``None`` when it was unreadable and set aside)."""

    queue_list: str
    message: str | None
    delivery_tag: str | None


def fetch(reply: Any) -> list[Fetched]:
    return [
        Fetched(
            bytes_to_str(reply[i]),
            bytes_to_str(reply[i + 1]) if reply[i + 1] else None,
            bytes_to_str(reply[i + 2]) if reply[i + 2] else None,
        )
        for i in range(0, len(reply), 3)
    ]


@dataclass(frozen=True)
class BacklogSorted:
    """``backlog_sort.lua``: how many messages it moved (set aside ones too), whether a list
    still holds messages, and the list of each message set aside."""

    moved: int
    more_queued: bool
    set_aside: list[str]


def backlog_sort(reply: Any) -> BacklogSorted:
    moved, left, *aside = reply
    return BacklogSorted(int(moved), int(left) == 1, [bytes_to_str(name) for name in aside])


@dataclass(frozen=True)
class TaskStart:
    """``task_start.lua``: the deliveries counted, the record's progress fields (``None`` where
    it has none), Celery's stored meta (``None`` when none, or the results live apart), and the
    slot answer when a slot was tried for."""

    deliveries: int
    attempts: str | None
    first_attempt_at: str | None
    cancel_requested: str | None
    endpoint: str | None
    endpoints_tried: str | None
    job_id: str | None
    polls: str | None
    meta: bytes | None
    slot: SlotReply | None


def task_start(reply: Any) -> TaskStart:
    deliveries, fields, meta, answer = reply
    texts = (value.decode() if value is not None else None for value in fields)
    attempts, first, cancel, endpoint, tried, job_id, polls = texts
    slot = limits_replies.slot_acquire(answer) if answer else None
    return TaskStart(
        int(deliveries), attempts, first, cancel, endpoint, tried, job_id, polls, meta, slot
    )


@dataclass(frozen=True)
class TaskEnd:
    """``task_end.lua``: the record's cancel_requested, attempts and created_at."""

    cancel_requested: bool
    attempts: int
    created_at: str | None


def task_end(reply: Any) -> TaskEnd:
    cancel, attempts, created_at = reply
    created = created_at.decode() if created_at is not None else None
    return TaskEnd(bool(cancel), int(attempts or 0), created)
