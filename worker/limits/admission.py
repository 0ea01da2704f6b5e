"""Who gets an endpoint's next slot: its admission queue in Redis (see docs/scheduling.md).

A task that finds every slot of its endpoint taken joins the endpoint's admission queue
(``scripts/lib/admission_queue.lua``), ordered by priority band first (9 - priority: 0 first), then
by its tenant's virtual finish time (self-clocked weighted fair queuing: a tenant of weight ``w``
moves its clock on by ``1/w`` a task, or by ``tokens/w`` where the endpoint is fair by tokens
(:mod:`worker.limits.cost`), so tenants with backlogs share the slots by weight, a
tenant's own tasks go oldest first, and a tenant with nothing waiting leaves its share to the
others). Every ``every``-th slot goes to the band of the task that has waited longest, so low
priorities progress under a steady stream of high ones.

A slot that frees goes to the head of the queue in the script that frees it (a release, the
end of a task, a refusal), whichever worker on whichever machine holds that task; the script
pushes the slot's token on the holder's grant list, which one thread of the holder's process
pops (``BLPOP``) and hands to the waiting task. Waiting costs no polling: per process, one
blocking pop, and when it has been quiet for ``SWEEP_S`` one sweep that gives lapsed leases
(a killed worker's) to the queue. Each waiter has an expiry that its process renews with its
leases, so a killed worker's waiters lapse as its leases do.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import redis

from worker import keys, lua
from worker.contract import PRIORITY_MAX
from worker.limits import presence, script_replies
from worker.tenancy.tenant_keys import INTERNAL

log = logging.getLogger(__name__)

#: How long the grant list may stay quiet before this process sweeps for lapsed leases.
SWEEP_S = 0.5
#: A process that has not swept its endpoints' leases for this many lease TTLs is stalled (its
#: heartbeat sweeps every third of a TTL): its leases are renewed on its behalf while its
#: presence connection is open (worker.limits.presence).
STALL_TTLS = 0.5
#: The names the scripts give the queue's keys (:attr:`Admission.keys`) and a waiter's
#: arguments (:meth:`Admission.args`), in their order.
QUEUE_KEYS = ("admit", "byage", "info", "age")
WAITER_ARGS = ("band", "tenant", "weight", "owner", "every", "cost")

Weights = Callable[[str], float]
#: An endpoint's cap, or what the slot scripts take for it: a number, an "auto" spec
#: (:func:`worker.limits.auto_limit.limit_spec`), or a pool's spec
#: (:meth:`worker.limits.pool.ReplicaPool.spec`), read anew for each script.
Limit = int | str | Callable[[], int | str]


def equal_weights(_tenant: str) -> float:
    return 1.0


def band(priority: int) -> int:
    """The queue's band of a genqueue priority (0-9, 9 most urgent): 0 goes first."""
    return PRIORITY_MAX - max(0, min(PRIORITY_MAX, priority))


class Admission:
    """This process's waiters in the admission queue of the endpoint ``endpoint_id``.

    :param limit: the endpoint's concurrency cap (see :data:`Limit`).
    :param every: every how many grants one goes to the band of the longest wait (0: never).
    :param weights: a tenant's weight (1.0 for all by default).
    """

    def __init__(
        self,
        client: redis.Redis,
        endpoint_id: str,
        limit: Limit,
        every: int,
        weights: Weights = equal_weights,
        ttl_ms: int = 30_000,
    ) -> None:
        self._client = client
        self._lease = keys.lease(endpoint_id)
        self._swept = keys.lease_swept(endpoint_id)
        self._ttl_ms = ttl_ms
        self.presence = presence.for_process(client)
        self.keys = (
            keys.admission(endpoint_id),
            keys.admission_by_age(endpoint_id),
            keys.admission_info(endpoint_id),
            keys.admission_age(endpoint_id),
        )
        self.owner = keys.grants(f"{endpoint_id}:{self.presence.id}.{uuid.uuid4().hex[:8]}")
        #: The queues the endpoint's tasks come from, whose Redis lists a release looks into.
        self.queues = ",".join(dict.fromkeys([*keys.GENERAL_QUEUES, keys.queue_for(endpoint_id)]))
        self._limit = limit
        self.every = every
        self._weights = weights
        self._waiting: dict[str, threading.Event] = {}
        self._sweep = lua.named(client, "worker.limits", "lease_sweep")
        self._leave = lua.named(client, "worker.limits", "admit_leave")
        self._renew = lua.named(client, "worker.limits", "admit_renew")
        self._listener: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()

    def limit(self) -> int | str:
        """The cap as the scripts take it now."""
        return self._limit() if callable(self._limit) else self._limit

    def args(self, priority: int, tenant: str | None, cost: int = 1) -> tuple[str | int, ...]:
        """A waiter's arguments of the scripts: band, tenant, weight, grant list, every, cost
        (its turn's: 1, or its estimated tokens where the endpoint is fair by tokens)."""
        name = tenant or INTERNAL
        return band(priority), name, repr(self.weight(name)), self.owner, self.every, cost

    def named_args(self, priority: int, tenant: str | None, cost: int = 1) -> dict[str, Any]:
        """:meth:`args` by the names the slot scripts give them."""
        return dict(zip(WAITER_ARGS, self.args(priority, tenant, cost), strict=True))

    def named_keys(self) -> dict[str, str]:
        """The queue's keys by the names the scripts give them."""
        return dict(zip(QUEUE_KEYS, self.keys, strict=True))

    def weight(self, tenant: str | None) -> float:
        """``tenant``'s weight in the queue's fair shares."""
        return float(self._weights(tenant or INTERNAL))

    def expect(self, token: str) -> threading.Event:
        """Listen for a grant to ``token`` (before it joins the queue: none is missed)."""
        event = self._waiting.setdefault(token, threading.Event())
        self._ensure_listener()
        self._wake.set()
        return event

    def forget(self, token: str) -> None:
        """``token`` waits no more here (it took its slot, or left)."""
        self._waiting.pop(token, None)

    def leave(self, token: str) -> None:
        """``token`` stops waiting: its place, or a slot granted to it, goes to the next."""
        self.forget(token)
        try:
            self._leave(
                keys={"lease": self._lease, **self.named_keys()},
                args={"token": token, "limit": self.limit(), "every": self.every},
            )
        except redis.RedisError:
            log.warning("could not leave the admission queue; the place lapses by itself")

    def renew(self, ttl_ms: int) -> None:
        """Push this process's waiters' expiry on; wake those that no longer wait (granted, or
        lost), so that they ask again."""
        tokens = list(self._waiting)
        if not tokens:
            return
        gone = self._renew(
            keys={"lease": self._lease, **self.named_keys()},
            args={"ttl_ms": ttl_ms, "tokens": tokens},
        )
        for token in script_replies.admit_renew(gone):
            self._granted(token)

    def sweep(self) -> int:
        """Free the slots and places of dead processes, keep those of stalled ones, and give
        free slots to the queue (``scripts/lease_sweep.lua``); how many were granted."""
        live = presence.live_ids(self._client)
        swept = self._sweep(
            keys={"lease": self._lease, **self.named_keys(), "swept": self._swept},
            args={
                "limit": self.limit(), "every": self.every, "ttl_ms": self._ttl_ms,
                "stall_ms": int(self._ttl_ms * STALL_TTLS), "self_id": self.presence.id,
                "live_spec": "-" if live is None else ",".join(sorted(live)),
            },
        )  # fmt: skip
        return script_replies.lease_sweep(swept).granted

    def close(self) -> None:
        self._stopped.set()
        self._wake.set()

    def _granted(self, token: str) -> None:
        event = self._waiting.get(token)
        if event is not None:
            event.set()

    def _ensure_listener(self) -> None:
        if self._listener is not None and self._listener.is_alive():
            return
        with self._lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(
                    target=self._listen, name="genqueue-admission", daemon=True
                )
                self._listener.start()

    def _listen(self) -> None:
        while not self._stopped.is_set():
            if not self._waiting:
                self._wake.wait(SWEEP_S)
                self._wake.clear()
                continue
            try:
                self._pop()
            except (redis.RedisError, OSError, ValueError) as err:
                if self._stopped.is_set():
                    return  # the client was closed under a waiting pop
                log.warning("admission queue: %s; trying again", type(err).__name__)
                self._stopped.wait(SWEEP_S)

    def _pop(self) -> None:
        popped: Any = self._client.blpop([self.owner], timeout=SWEEP_S)
        if popped:
            self._granted(popped[1].decode())
            return
        # Quiet for a while: give a killed worker's slots (and lapsed leases) to the queue.
        self.sweep()
