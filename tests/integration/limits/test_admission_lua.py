"""worker/limits/scripts/lib/admission_queue.lua through slot_acquire.lua and slot_release.lua,
against a real Redis: who gets an endpoint's freed slot (priority, fair shares, no starvation,
lapses)."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import redis

from worker import keys, lua

EP = "ep"
LIMIT = 1
TTL_MS = 30_000
OWNER = keys.grants("test-owner")
LEASE, BREAKER = keys.lease(EP), keys.breaker(EP)
PROBE, RATE = keys.breaker_probe(EP), keys.rate(EP)
QUEUE = [
    keys.admission(EP), keys.admission_by_age(EP), keys.admission_info(EP), keys.admission_age(EP),
]  # fmt: skip


class Endpoint:
    """An endpoint with a cap of one, driven through the guard's scripts."""

    def __init__(self, client: redis.Redis, every: int = 0) -> None:
        self.client = client
        self.every = every
        self._acquire = lua.register(client, "worker.limits", "slot_acquire")
        self._release = lua.register(client, "worker.limits", "slot_release")
        self.holder: str | None = None

    def ask(
        self,
        token: str,
        priority: int = 5,
        tenant: str = "internal",
        weight: float = 1.0,
        ttl_ms: int = TTL_MS,
        cost: int = 1,
    ) -> int:
        """Ask for a slot for ``token``: 1 taken, 0 waiting in the queue. ``cost``: its turn's
        (1 fair by tasks, its estimated tokens fair by tokens: worker.limits.cost)."""
        args = [
            LIMIT, ttl_ms, token, "1000:5000", 0, 0,
            9 - priority, tenant, repr(weight), OWNER, self.every, cost,
        ]  # fmt: skip
        code = int(self._acquire(keys=[LEASE, BREAKER, PROBE, RATE, *QUEUE], args=args)[0])
        if code == 1:
            self.holder = token
        return code

    def next(self, queues: str = "") -> str | None:
        """Release the holder's slot; the token the queue handed it to (now the holder)."""
        assert self.holder is not None
        args = [self.holder, "ok", 5, "1000:5000", 0, LIMIT, self.every, queues]
        self._release(keys=[LEASE, BREAKER, PROBE, RATE, *QUEUE], args=args)
        granted = self.client.lpop(OWNER)
        self.holder = granted.decode() if granted else None
        if self.holder is not None:  # the waiter takes the slot it was handed
            assert self.ask(self.holder) == 1
        return self.holder

    def drain(self, count: int) -> list[str]:
        order = []
        for _ in range(count):
            token = self.next()
            assert token is not None
            order.append(token)
        return order


@pytest.fixture
def endpoint(redis_client: redis.Redis) -> Endpoint:
    ep = Endpoint(redis_client)
    assert ep.ask("running") == 1
    return ep


def test_a_freed_slot_goes_to_the_highest_priority_then_the_oldest(endpoint: Endpoint) -> None:
    for n in range(5):
        assert endpoint.ask(f"batch-{n}", priority=2) == 0
    assert endpoint.ask("interactive", priority=9) == 0
    assert endpoint.ask("normal", priority=5) == 0

    assert endpoint.drain(7) == [
        "interactive", "normal", "batch-0", "batch-1", "batch-2", "batch-3", "batch-4",
    ]  # fmt: skip
    assert endpoint.next() is None  # nothing waits: the slot stays free
    assert endpoint.ask("newcomer") == 1


def test_a_waiter_asking_again_keeps_its_place(endpoint: Endpoint) -> None:
    assert endpoint.ask("first", priority=2) == 0
    assert endpoint.ask("second", priority=2) == 0
    assert endpoint.ask("first", priority=2) == 0  # its worker asks again (a lost grant)
    assert endpoint.drain(2) == ["first", "second"]


@pytest.mark.parametrize("order", ["a first", "b first", "interleaved"])
def test_tenants_share_the_slots_by_weight_whatever_order_they_came_in(
    endpoint: Endpoint, order: str
) -> None:
    a = [(f"a-{n}", "a", 3.0) for n in range(60)]
    b = [(f"b-{n}", "b", 1.0) for n in range(60)]
    arrivals = {
        "a first": a + b,
        "b first": b + a,
        "interleaved": [t for pair in zip(a, b, strict=True) for t in pair],
    }[order]
    for token, tenant, weight in arrivals:
        assert endpoint.ask(token, priority=2, tenant=tenant, weight=weight) == 0

    order_granted = endpoint.drain(80)
    served = Counter(token[0] for token in order_granted)
    assert served["a"] / served["b"] == pytest.approx(3.0, rel=0.1)
    # Within a tenant, oldest first.
    a_served = [t for t in order_granted if t.startswith("a")]
    assert a_served == [f"a-{n}" for n in range(len(a_served))]
    # A tenant with nothing left gives its share to the other at once.
    rest = endpoint.drain(40)
    assert rest == [f"b-{n}" for n in range(served["b"], 60)]


def test_a_tenant_back_from_idle_gets_no_credit_for_its_absence(endpoint: Endpoint) -> None:
    for n in range(30):
        endpoint.ask(f"a-{n}", priority=2, tenant="a")
    endpoint.drain(20)  # a alone for a while
    for n in range(10):
        endpoint.ask(f"b-{n}", priority=2, tenant="b")
    # Equal weights: from now on they alternate; b does not get 20 slots in a row.
    assert Counter(t[0] for t in endpoint.drain(10)) == {"a": 5, "b": 5}


@pytest.mark.parametrize("fairness", ["tasks", "tokens"])
def test_fair_by_tokens_turns_go_in_inverse_proportion_to_cost(
    endpoint: Endpoint, fairness: str
) -> None:
    # Tenant a sends 4,000-token prompts, b 100-token ones, at the same weight (the cost is what
    # worker.limits.cost.turn_cost gives: 1 by tasks, the estimate by tokens).
    by_tokens = fairness == "tokens"
    for n in range(5):
        endpoint.ask(f"a-{n:03}", priority=2, tenant="a", cost=4000 if by_tokens else 1)
    for n in range(100):
        endpoint.ask(f"b-{n:03}", priority=2, tenant="b", cost=100 if by_tokens else 1)
    served = Counter(token[0] for token in endpoint.drain(82))
    if by_tokens:  # 40 of b's turns for each of a's: equal tokens served
        assert served == {"a": 2, "b": 80}
    else:  # by tasks, as before: turns alternate, whatever they cost
        assert served == {"a": 5, "b": 77}


def test_low_priority_progresses_under_a_steady_stream_of_high(redis_client: redis.Redis) -> None:
    endpoint = Endpoint(redis_client, every=10)
    assert endpoint.ask("running") == 1
    assert endpoint.ask("batch", priority=2) == 0
    granted = []
    for n in range(30):  # a new interactive task arrives before each slot frees
        endpoint.ask(f"interactive-{n}", priority=9)
        granted.append(endpoint.next())
    assert "batch" in granted[:10]
    assert granted.count("batch") == 1


def test_strict_priority_without_the_oldest_band_share(endpoint: Endpoint) -> None:
    endpoint.ask("batch", priority=2)
    granted = []
    for n in range(30):
        endpoint.ask(f"interactive-{n}", priority=9)
        granted.append(endpoint.next())
    assert "batch" not in granted


def test_a_dead_workers_waiter_lapses_and_a_lapsed_lease_goes_to_the_queue(
    redis_client: redis.Redis, endpoint: Endpoint
) -> None:
    assert endpoint.ask("dead-worker", priority=9, ttl_ms=100) == 0
    assert endpoint.ask("alive", priority=2) == 0
    time.sleep(0.2)  # the dead worker stopped renewing its waiter
    assert endpoint.next() == "alive"

    # The holder is killed: its lease lapses, and the sweep hands the slot to the queue.
    assert endpoint.ask("next", priority=2) == 0
    redis_client.zadd(LEASE, {"alive": 0})  # lapsed
    sweep = lua.register(redis_client, "worker.limits", "admit_sweep")
    assert sweep(keys=[LEASE, *QUEUE], args=[LIMIT, 0]) == 1
    assert redis_client.lpop(OWNER) == b"next"


def test_a_granted_slot_refused_goes_on_to_the_next(
    redis_client: redis.Redis, endpoint: Endpoint
) -> None:
    endpoint.ask("first", priority=5)
    endpoint.ask("second", priority=5)
    args = [endpoint.holder, "ok", 5, "1000:5000", 0, LIMIT, 0, ""]
    lua.register(redis_client, "worker.limits", "slot_release")(
        keys=[LEASE, BREAKER, PROBE, RATE, *QUEUE], args=args
    )
    assert redis_client.lpop(OWNER) == b"first"
    # The breaker opened before "first" took its slot: refused, and the slot goes on.
    redis_client.hset(BREAKER, "open_until", int(time.time() * 1000) + 60_000)
    assert endpoint.ask("first") == 2
    assert redis_client.lpop(OWNER) == b"second"
    # A waiter that stops waiting leaves its granted slot to the next too.
    endpoint.client.delete(BREAKER)
    endpoint.ask("third")
    leave = lua.register(redis_client, "worker.limits", "admit_leave")
    assert leave(keys=[LEASE, *QUEUE], args=["second", LIMIT, 0]) == 2
    assert redis_client.lpop(OWNER) == b"third"


def test_a_freed_slot_waits_a_moment_for_an_urgent_task_still_in_redis(
    redis_client: redis.Redis, endpoint: Endpoint
) -> None:
    endpoint.ask("batch-0", priority=2)
    endpoint.ask("batch-1", priority=2)
    # An urgent message not fetched yet, in the Redis list of its priority step (9 - 9 = 0).
    redis_client.lpush(keys.queue_list("genqueue", 0), "an urgent message")
    assert endpoint.next(queues="genqueue,celery") is None  # held for it
    assert endpoint.ask("batch-late", priority=2) == 0  # not for a less urgent newcomer
    redis_client.delete(keys.queue_list("genqueue", 0))  # fetched by a worker
    assert endpoint.ask("urgent", priority=9) == 1
    assert endpoint.next(queues="genqueue,celery") == "batch-0"


def test_a_held_slot_goes_to_the_queue_if_no_urgent_task_comes(
    redis_client: redis.Redis, endpoint: Endpoint
) -> None:
    endpoint.ask("batch-0", priority=2)
    redis_client.lpush(keys.queue_list("celery", 3), "a message for another endpoint")
    assert endpoint.next(queues="genqueue,celery") is None
    sweep = lua.register(redis_client, "worker.limits", "admit_sweep")
    assert sweep(keys=[LEASE, *QUEUE], args=[LIMIT, 0]) == 0  # held
    time.sleep(0.3)
    assert sweep(keys=[LEASE, *QUEUE], args=[LIMIT, 0]) == 1
    assert redis_client.lpop(OWNER) == b"batch-0"
    endpoint.holder = "batch-0"
    # A hold nobody took: the next one waits a second, so the message costs little.
    endpoint.ask("batch-1", priority=2)
    assert endpoint.next(queues="genqueue,celery") == "batch-1"


def test_a_tenant_with_nothing_waiting_keeps_no_state(
    redis_client: redis.Redis, endpoint: Endpoint
) -> None:
    # 200 tenants come and go while traffic flows: the queue's hash keeps none of them.
    for n in range(200):
        assert endpoint.ask(f"t{n}", tenant=f"tenant-{n}") == 0
        assert endpoint.next() == f"t{n}"
    fields = {field.decode() for field in redis_client.hkeys(keys.admission_info(EP))}
    assert not [field for field in fields if field.startswith(("F:", "w:"))], fields
    assert len(fields) <= 4  # the band's clock and the counters
    # One still waiting keeps its clock, until its turn.
    endpoint.ask("a1", tenant="a")
    endpoint.ask("a2", tenant="a")
    assert endpoint.next() == "a1"
    assert redis_client.hexists(keys.admission_info(EP), "F:4:a")
    assert endpoint.next() == "a2"
    assert not redis_client.hexists(keys.admission_info(EP), "F:4:a")
