"""The backlog: the queues' messages sorted by tenant, so that a fetch takes them in fair order.

Redis's lists are first in, first out within a priority: a tenant whose tasks were sent behind
another's 50,000 would wait for all of them. So the worker's fetch (``scripts/fetch.lua``) moves
the messages it meets off each queue list into a list per tenant (``scripts/backlog.lua``) and
takes from those by virtual time, each tenant its oldest; a worker whose prefetch window is full
sorts what arrives meanwhile (``scripts/backlog_sort.lua``), so a newcomer's message is next in
turn by the time a window has room. A message is moved within one script: it is in its queue
list, in its tenant's list, or recorded as unacked, never nowhere (see docs/scheduling.md).

This module holds what the scripts take from the worker: the tenants' weights, and the size of
the backlog for those that count what is queued (the lost-message sweep, ``/metrics``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from worker import keys
from worker.tenants import INTERNAL, TenantsSource

#: The tenant of a message that names none (as the admission queue's).
DEFAULT_TENANT = INTERNAL
#: The most messages one sorting run moves (a few ms of Redis's time: 30 µs or so each).
SORT_MAX = 500
#: How often a worker whose window is full looks for messages to sort, when the last look found
#: none (it sorts again at once while there are more).
SORT_EVERY_S = 0.25

WeightsSource = Callable[[], Mapping[str, float]]


def _no_weights() -> Mapping[str, float]:
    return {}


_source: WeightsSource = _no_weights


def use_weights(source: WeightsSource) -> None:
    """The tenants' weights come from ``source`` in this process (the worker's tenants file,
    re-read by ``source`` as it changes; a tenant it does not name weighs 1)."""
    global _source
    _source = source


def tenants_file_weights(tenants: TenantsSource) -> WeightsSource:
    """The weights of the tenants file of ``tenants`` (re-read as it changes)."""

    def weights() -> Mapping[str, float]:
        return {name: tenant.weight for name, tenant in tenants.current().by_name.items()}

    return weights


def weights_spec(source: WeightsSource | None = None) -> str:
    """The scripts' ``weights`` argument: ``tenant=weight`` lines, for the tenants whose weight
    is not 1 (those of ``source``, else of this process's :func:`use_weights`)."""
    found = (source or _source)()
    return "\n".join(f"{name}={weight!r}" for name, weight in found.items() if weight != 1)


def size_command(lists: Iterable[str]) -> tuple[Any, ...]:
    """The command whose answer :func:`size_of` reads: how many messages the backlogs of
    ``lists`` hold."""
    return ("HMGET", keys.backlog_size(), *lists)


def size_of(answer: Iterable[Any]) -> int:
    return sum(int(n) for n in answer if n is not None)
