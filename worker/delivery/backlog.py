"""The backlog: the queues' messages sorted by tenant, so that a fetch takes them in fair order.

Redis's lists are first in, first out within a priority: a tenant whose tasks were sent behind
another's 50,000 would wait for all of them. So the worker's fetch (``scripts/fetch.lua``) moves
the messages it meets off each queue list into a list per tenant
(``scripts/lib/backlog_fair_order.lua``) and takes from those by virtual time, each tenant its
oldest; a worker whose prefetch window is full sorts what arrives meanwhile
(``scripts/backlog_sort.lua``), so a newcomer's message is next in turn by the time a window has
room. A message is moved within one script: it is in its queue list, in its tenant's list, or
recorded as unacked, never nowhere (see docs/scheduling.md).

This module holds what the scripts take from the worker: the tenants' weights, the queues whose
endpoint is fair by tokens, and the size of the backlog for those that count what is queued
(the lost-message sweep, ``/metrics``).

**Fair by tokens.** A backlog serves a queue's lists, and a queue feeds one endpoint: a named
endpoint's queue (``genqueue.<name>``) its endpoint, the general queues (``genqueue``,
``celery``) the default endpoint. So the mode is the queue's: the worker names the queues whose
endpoint's ``fairness`` is ``tokens`` (:func:`token_queues`, set once at its start by
:func:`use_fairness`) in each fetch and sort, and the scripts charge a message taken from such a
queue's list its estimated tokens (:mod:`worker.limits.cost`) instead of 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from worker import keys
from worker.endpoints.config import Endpoints
from worker.settings import default_of
from worker.tenancy.tenants import INTERNAL, TenantsSource

#: The tenant of a message that names none: :data:`worker.tenancy.tenant_keys.INTERNAL` (the scripts
#: take it as an argument).
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


#: The queues fair by tokens in this process, and the max_tokens of a request that gives none.
_token_queues: tuple[str, ...] = ()
_default_max_tokens: int = default_of("default_max_tokens")


def token_queues(endpoints: Endpoints) -> list[str]:
    """The queues whose messages go to an endpoint fair by tokens: each such endpoint's own
    queue, and the general queues when it is the default endpoint."""
    found: list[str] = []
    for name, spec in endpoints.specs.items():
        if spec.fairness == "tokens":
            found.append(keys.queue_for(name))
            if name == endpoints.default:
                found.extend(keys.GENERAL_QUEUES)
    return list(dict.fromkeys(found))


def use_fairness(queues: Iterable[str], default_max_tokens: int) -> None:
    """The backlogs of ``queues`` take turns by tokens in this process (the others by tasks);
    ``default_max_tokens`` is the estimate's max_tokens of a request that gives none."""
    global _token_queues, _default_max_tokens
    _token_queues = tuple(queues)
    _default_max_tokens = default_max_tokens


def fairness_args() -> tuple[str, int]:
    """The scripts' ``token_queues`` and ``default_max_tokens`` arguments."""
    return "\n".join(_token_queues), _default_max_tokens


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
