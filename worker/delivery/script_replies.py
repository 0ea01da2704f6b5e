"""The replies of the delivery's Lua scripts (``worker/delivery/scripts/``), decoded in one
place: what each header's ``Returns`` line says, as values a caller reads by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kombu.utils.encoding import bytes_to_str


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
