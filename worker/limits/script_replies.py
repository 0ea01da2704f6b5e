"""The replies of the limits' Lua scripts (``worker/limits/scripts/``), decoded in one place:
what each header's ``Returns`` line says, as values a caller reads by name."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class SlotAnswer(Enum):
    """What ``acquire_slot`` (``lib/slot_take.lua``) answers a call for a slot."""

    NONE_FREE = 0
    TAKEN = 1
    BREAKER_OPEN = 2
    RATE_LIMITED = 3
    CLAIMED_ELSEWHERE = 4
    CANCELLED = 5


@dataclass(frozen=True)
class SlotReply:
    """``acquire_slot``'s answer (``slot_acquire.lua``'s, and the slot answer of
    ``task_start.lua``): the ms to wait (breaker open, rate limit spent), and with a claim,
    a slot taken's attempt numbers, in all and on this endpoint."""

    answer: SlotAnswer
    wait_ms: int
    attempts: tuple[int, int] | None = None


def slot_acquire(reply: Any) -> SlotReply:
    code, wait_ms, *attempts = (int(n) for n in reply)
    counted = (attempts[0], attempts[1]) if attempts else None
    return SlotReply(SlotAnswer(code), wait_ms, counted)


#: ``pool_pick.lua``'s replica index when every replica is open, and when a closed one is full.
PICK_ALL_OPEN, PICK_FULL = -1, -2


@dataclass(frozen=True)
class ReplicaPick:
    """``pool_pick.lua``: the replica picked (``None``: none may take work now), the ms until
    one may (every replica open), and whether a healthy one was full instead."""

    replica: int | None
    wait_ms: int
    full: bool


def pool_pick(reply: Any) -> ReplicaPick:
    replica, wait_ms = (int(n) for n in reply)
    return ReplicaPick(replica if replica >= 0 else None, wait_ms, replica == PICK_FULL)


@dataclass(frozen=True)
class LeaseSweep:
    """``lease_sweep.lua``: the slots granted to the admission queue, the dead tokens removed."""

    granted: int
    removed: int


def lease_sweep(reply: Any) -> LeaseSweep:
    granted, removed = (int(n) for n in reply)
    return LeaseSweep(granted, removed)


def admit_renew(reply: Any) -> list[str]:
    """``admit_renew.lua``: the tokens that no longer wait."""
    return [token.decode() if isinstance(token, bytes) else str(token) for token in reply]
