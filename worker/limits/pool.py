"""A pool: replicas of one model behind one endpoint name, each with its own cap and breaker.

The pool keeps one set of slots and one admission queue (:mod:`worker.limits.admission`), so
priority and fair shares hold across the pool as a whole. Its limit is not a number but a spec
(:meth:`ReplicaPool.spec`) that every slot script reads through ``slot_limit``
(``scripts/lib/pool_limit.lua``): the caps of the replicas whose breaker is closed, plus the calls
the others still hold. A call that holds a pool slot then picks its replica
(``scripts/pool_pick.lua``): the one with the most room relative to its limit among the healthy
ones, or with affinity the one that served the same prefix or session last while it has room.
Its release moves that replica's breaker (:meth:`ReplicaPool.health_keys`), so a replica that
fails opens alone, takes no work until its probe succeeds, and its share goes to the others at
once. See docs/endpoints.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import redis

from worker import keys, lua
from worker.limits import script_replies

#: How long a prefix or session remembers its replica after its last call.
AFFINITY_TTL_S = 3_600.0
#: The most prefixes and sessions remembered per pool (past it, the memory starts afresh).
AFFINITY_MAX = 10_000

#: What :meth:`ReplicaPool.pick` answers for the wait when a healthy replica is full.
FULL = -1
#: How often a call whose healthy replicas were all full asks for one again, and for how long.
REPICK_EVERY_S = 0.05
REPICK_FOR_S = 30.0

#: A replica's cap by its index: ``max_concurrency`` today (one place for "auto" to plug in).
Caps = Callable[[int], int]


@dataclass(frozen=True)
class ReplicaState:
    """One replica as the status shows it."""

    index: int
    in_flight: int
    breaker_open: bool


class ReplicaPool:
    """The replicas of the pool endpoint ``endpoint_id``.

    :param client: the Redis client.
    :param endpoint_id: the pool's id (see :mod:`worker.keys`).
    :param replicas: how many replicas it has.
    :param caps: each replica's cap, read on every call to :meth:`spec`.
    :param ttl_ms: a lease's TTL.
    """

    def __init__(
        self, client: redis.Redis, endpoint_id: str, replicas: int, caps: Caps, ttl_ms: int
    ) -> None:
        self._client = client
        self.endpoint_id = endpoint_id
        self.replicas = replicas
        self._caps = caps
        self._ttl_ms = ttl_ms
        self._lease = keys.lease(endpoint_id)
        self._assign = keys.pool_assign(endpoint_id)
        self._affinity = keys.pool_affinity(endpoint_id)
        self._ids = [keys.replica_id(endpoint_id, i) for i in range(replicas)]
        self._pick = lua.named(client, "worker.limits", "pool_pick")

    def spec(self) -> str:
        """The pool's limit as the slot scripts take it (``scripts/lib/pool_limit.lua``)."""
        parts = ["pool", self._assign]
        for index, replica in enumerate(self._ids):
            parts += [str(self._caps(index)), keys.breaker(replica), keys.breaker_probe(replica)]
        return "|".join(parts)

    def total_cap(self) -> int:
        """The caps of all replicas, healthy or not."""
        return sum(self._caps(i) for i in range(self.replicas))

    def replica_ids(self) -> list[str]:
        return list(self._ids)

    def health_keys(self, replica: int) -> tuple[str, str]:
        """The breaker and probe keys a call on ``replica`` moves when it ends."""
        return keys.breaker(self._ids[replica]), keys.breaker_probe(self._ids[replica])

    def pick(self, token: str, affinity_key: str = "") -> tuple[int | None, int]:
        """The replica for the call holding the pool slot ``token``; or ``None`` and the ms
        until one may take work (every replica open, or half-open with its probe running),
        or ``None`` and :data:`FULL` (a healthy replica is full: ask again as calls end)."""
        pick = script_replies.pool_pick(
            self._pick(
                keys={"lease": self._lease, "affinity": self._affinity},
                args={
                    "spec": self.spec(), "token": token, "ttl_ms": self._ttl_ms,
                    "key": affinity_key, "affinity_ttl_ms": int(AFFINITY_TTL_S * 1000),
                    "affinity_max": AFFINITY_MAX,
                },
            )
        )  # fmt: skip
        if pick.full:
            return None, FULL
        return pick.replica, pick.wait_ms

    def states(self) -> list[ReplicaState]:
        """Each replica's calls in flight and whether its breaker is open now."""
        now_ms = _now_ms(self._client)
        with self._client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._assign)
            pipe.zrangebyscore(self._lease, now_ms, "+inf")
            for replica in self._ids:
                pipe.hget(keys.breaker(replica), "open_until")
            assign, live, *open_until = pipe.execute()
        alive = set(live)
        counts = [0] * self.replicas
        for token, index in assign.items():
            if token in alive and 0 <= int(index) < self.replicas:
                counts[int(index)] += 1
        return [
            ReplicaState(i, counts[i], int(open_until[i] or 0) > now_ms)
            for i in range(self.replicas)
        ]


def _now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def affinity_key(text: str) -> str:
    """The key a prefix or session is remembered by: a digest, never the text itself."""
    return hashlib.sha256(text.encode()).hexdigest()[:24]
