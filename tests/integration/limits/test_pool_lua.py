"""A pool's slots and replica pick (worker/limits/scripts/lib/pool_limit.lua, pool_pick.lua) through
the guard's scripts against a real Redis: the pool's limit is its healthy replicas' caps, a
call goes to the replica with the most room, an open replica is skipped and its share goes to
the others, a half-open one takes one probe, affinity keeps a key on its replica while it has
room, and a dead call's assignment stops counting."""

from __future__ import annotations

import time

import pytest
import redis

from worker import keys, lua
from worker.limits.pool import FULL, ReplicaPool

pytestmark = pytest.mark.timeout(30)

EP = "pool"
TTL_MS = 30_000
OWNER = keys.grants("test-owner")
LEASE, RATE = keys.lease(EP), keys.rate(EP)
QUEUE = [
    keys.admission(EP), keys.admission_by_age(EP), keys.admission_info(EP), keys.admission_age(EP),
]  # fmt: skip


class Pool:
    """A pool of replicas with the given caps, driven through the slot scripts and the pick."""

    def __init__(self, client: redis.Redis, caps: list[int]) -> None:
        self.client = client
        self.pool = ReplicaPool(client, EP, len(caps), lambda i: caps[i], TTL_MS)
        self._acquire = lua.register(client, "worker.limits", "slot_acquire")
        self._release = lua.register(client, "worker.limits", "slot_release")

    def ask(self, token: str) -> list[int]:
        """Ask for a pool slot: [1, 0] taken, [0, 0] waiting, [2, ms] every replica open."""
        args = [self.pool.spec(), TTL_MS, token, "1000:5000", 0, 0, 4, "t", "1.0", OWNER, 0]
        pool_keys = [LEASE, keys.breaker(EP), keys.breaker_probe(EP), RATE, *QUEUE]
        return [int(n) for n in self._acquire(keys=pool_keys, args=args)[:2]]

    def take(self, token: str, affinity: str = "") -> int | None:
        """A pool slot and its replica."""
        assert self.ask(token) == [1, 0]
        return self.pool.pick(token, affinity)[0]

    def end(self, token: str, replica: int, outcome: str = "ok", threshold: int = 5) -> None:
        breaker, probe = self.pool.health_keys(replica)
        args = [token, outcome, threshold, "1000:5000", 0, self.pool.spec(), 0, ""]
        self._release(keys=[LEASE, breaker, probe, RATE, *QUEUE], args=args)

    def open(self, replica: int, for_ms: int) -> None:
        breaker, _probe = self.pool.health_keys(replica)
        self.client.hset(breaker, "open_until", int(time.time() * 1000) + for_ms)


def test_the_pools_limit_is_the_sum_of_its_replicas_caps(redis_client: redis.Redis) -> None:
    pool = Pool(redis_client, [2, 1])
    assert [pool.ask(f"p.{i}")[0] for i in range(4)] == [1, 1, 1, 0]


def test_a_call_goes_to_the_replica_with_the_most_room(redis_client: redis.Redis) -> None:
    pool = Pool(redis_client, [3, 1])
    # Relative to its cap: 3/3 and 1/1 free tie (the first listed), then 2/3 against 1/1.
    assert [pool.take(f"p.{i}") for i in range(4)] == [0, 1, 0, 0]
    assert [s.in_flight for s in pool.pool.states()] == [3, 1]
    pool.end("p.1", 1)
    assert pool.take("p.4") == 1


def test_an_open_replica_takes_nothing_and_the_others_take_its_share(
    redis_client: redis.Redis,
) -> None:
    pool = Pool(redis_client, [2, 2])
    assert pool.take("p.a") == 0
    pool.open(0, 60_000)
    # Replica 0 still holds its call: the limit is its one call plus replica 1's two.
    assert [pool.ask(f"p.{i}")[0] for i in range(3)] == [1, 1, 0]
    assert [pool.pool.pick(f"p.{i}")[0] for i in range(2)] == [1, 1]
    assert [s.breaker_open for s in pool.pool.states()] == [True, False]
    pool.end("p.a", 0, outcome="failure")  # its call ends: the pool's limit is replica 1's
    assert pool.ask("p.late") == [0, 0]


def test_a_failing_replica_opens_alone_and_its_freed_slot_is_not_granted(
    redis_client: redis.Redis,
) -> None:
    pool = Pool(redis_client, [1, 1])
    assert [pool.take("p.a"), pool.take("p.b")] == [0, 1]
    assert pool.ask("p.waiting") == [0, 0]
    pool.end("p.a", 0, outcome="failure", threshold=1)  # opens replica 0's breaker
    assert redis_client.lpop(OWNER) is None  # no replica has room for the waiter
    assert redis_client.hget(keys.breaker(EP), "open_until") is None  # the pool's own: untouched
    pool.end("p.b", 1)
    assert redis_client.lpop(OWNER) == b"p.waiting"
    assert pool.pool.pick("p.waiting")[0] == 1


def test_every_replica_open_refuses_as_an_open_breaker(redis_client: redis.Redis) -> None:
    pool = Pool(redis_client, [2, 2])
    pool.open(0, 5_000)
    pool.open(1, 3_000)
    code, wait_ms = pool.ask("p.x")
    assert code == 2 and 2_000 < wait_ms <= 3_000


def test_a_half_open_replica_takes_one_probe(redis_client: redis.Redis) -> None:
    pool = Pool(redis_client, [4])
    pool.open(0, -1)  # its cooldown has passed
    assert pool.take("p.probe") == 0
    assert redis_client.get(keys.breaker_probe(keys.replica_id(EP, 0))) == b"p.probe"
    assert pool.ask("p.next") == [0, 0]  # one call while the probe runs
    pool.end("p.probe", 0)  # it answered: closed, its whole cap again
    assert redis_client.lpop(OWNER) == b"p.next"
    assert [pool.ask(f"p.{i}")[0] for i in range(3)] == [1, 1, 1]


def test_affinity_keeps_a_key_on_its_replica_while_it_has_room(
    redis_client: redis.Redis,
) -> None:
    pool = Pool(redis_client, [2, 2])
    assert pool.take("p.0") == 0
    assert pool.take("p.1", affinity="k") == 1  # most room: replica 1, which the key remembers
    assert pool.take("p.2", affinity="k") == 1  # replica 0 has as much room now: still 1
    assert pool.take("p.3", affinity="k") == 0  # replica 1 is full: the key moves to 0
    assert redis_client.hget(keys.pool_affinity(EP), "k") == b"0"


def test_a_dead_calls_assignment_stops_counting(redis_client: redis.Redis) -> None:
    pool = Pool(redis_client, [1, 1])
    assert [pool.take("dead.a"), pool.take("live.b")] == [0, 1]
    redis_client.zrem(LEASE, "dead.a")  # the lease sweep removed a dead worker's lease
    assert pool.take("live.c") == 0
    assert redis_client.hkeys(keys.pool_assign(EP)) != [] and not redis_client.hexists(
        keys.pool_assign(EP), "dead.a"
    )


def test_a_breaker_opened_between_grant_and_pick_says_full(redis_client: redis.Redis) -> None:
    pool = Pool(redis_client, [1, 1])
    assert pool.take("p.a") == 0
    assert pool.ask("p.b") == [1, 0]  # granted while both were closed
    pool.open(1, 60_000)  # then replica 1 went down, before p.b picked
    assert pool.pool.pick("p.b") == (None, FULL)  # ask again as calls end, not a circuit open
    pool.end("p.a", 0)
    assert pool.pool.pick("p.b") == (0, 0)


def test_the_affinity_memory_is_bounded(redis_client: redis.Redis) -> None:
    pool = Pool(redis_client, [8])
    pick = lua.register(redis_client, "worker.limits", "pool_pick")
    for i in range(5):
        assert pool.ask(f"p.{i}") == [1, 0]
        pick(
            keys=[LEASE, keys.pool_affinity(EP)],
            args=[pool.pool.spec(), f"p.{i}", TTL_MS, f"k{i}", 60_000, 3],
        )
        assert redis_client.hlen(keys.pool_affinity(EP)) <= 3
    assert 0 < redis_client.pttl(keys.pool_affinity(EP)) <= 60_000
