"""The slot values an :class:`~worker.limits.guard.EndpointGuard` hands out: an offer to take
a slot in passing, the slot it granted, and the release of a held one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from worker.limits.slots import Claim


class SlotGuard(Protocol):
    """What a slot value's holder calls on the guard that made it
    (:class:`worker.limits.guard.EndpointGuard`)."""

    def withdraw(self, offer: SlotOffer) -> None: ...

    def release_granted(self, granted: GrantedSlot) -> None: ...

    def settle(self, release: SlotRelease) -> None: ...

    def release(self, release: SlotRelease) -> None: ...


@dataclass(frozen=True)
class SlotOffer:
    """A slot to try for in passing, in another script that calls ``acquire_slot`` with
    ``keys`` and ``args`` (its arguments, ``now`` aside, then the admission queue's keys and
    arguments): taken only if it is free and no task waits for one."""

    guard: SlotGuard
    keys: tuple[str, ...]
    args: tuple[str | int, ...]
    token: str
    claim: Claim


@dataclass(frozen=True)
class GrantedSlot:
    """A :class:`SlotOffer` the script granted, with the task's attempt numbers."""

    offer: SlotOffer
    attempt: int
    attempt_on_endpoint: int


@dataclass(frozen=True)
class SlotRelease:
    """The release of a held slot, for a script that calls :data:`RELEASE_FUNCTION` with
    ``keys`` and ``args`` (its ``release_slot(...)`` arguments, ``now`` aside); the guard
    renews the slot until :meth:`EndpointGuard.settle` or :meth:`EndpointGuard.release`."""

    guard: SlotGuard
    keys: tuple[str, ...]
    args: tuple[str | int, ...]
    token: str
    replica: int | None = None
    #: Fair by tokens: the settling of the turn's cost (:func:`worker.limits.cost.settle_args`).
    settle: tuple[str | int, ...] = ()
