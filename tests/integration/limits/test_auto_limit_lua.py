"""worker/limits/scripts/lib/auto_limit.lua through slot_acquire.lua and slot_release.lua, against a
real Redis: the decisions of an "auto" limit's controller, driven by a model of a batching
server whose latency is flat up to a knee of calls at once and grows beyond it."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import redis

from worker import keys, lua
from worker.limits.auto_limit import AutoBounds, in_force, limit_spec

pytestmark = pytest.mark.timeout(60)

EP = "auto-ep"
TTL_MS = 30_000
OWNER = keys.grants("auto-test-owner")
SLOT_KEYS = [
    keys.lease(EP), keys.breaker(EP), keys.breaker_probe(EP), keys.rate(EP),
    keys.admission(EP), keys.admission_by_age(EP), keys.admission_info(EP), keys.admission_age(EP),
]  # fmt: skip
TOKENS = 10  # output tokens of every call

Latency = Callable[[int], float]  # ms a call takes with this many in flight


def batching(knee: int, base_ms: float = 100.0) -> Latency:
    """Flat up to ``knee`` calls at once, then growing faster than the calls (throughput
    falls past the knee)."""
    return lambda n: base_ms * max(1.0, n / knee) ** 1.5


class Server:
    """A batching server in virtual time: every call needs the same work, done in ``base_ms``
    up to ``knee`` calls at once; with more, each runs slower by (running / knee) ** 1.5 (the
    simulator's batching mode). A call's latency is what it met over its whole life, so calls
    that started under an older limit end with the latency of the load they ran in."""

    def __init__(self, knee: int, base_ms: float = 100.0) -> None:
        self.knee = knee
        self.base_ms = base_ms
        self.now_ms = 0.0
        self.work: dict[str, float] = {}  # work left of each running call (1.0 at its start)
        self.started: dict[str, float] = {}

    def start(self, token: str) -> None:
        if token not in self.work:
            self.work[token], self.started[token] = 1.0, self.now_ms

    def finish_next(self, running: list[str]) -> tuple[str, int]:
        """Run until the first of ``running`` finishes: its token and latency in ms."""
        speed = min(1.0, self.knee / len(self.work)) ** 1.5 / self.base_ms  # work per ms
        token = min(running, key=lambda t: (self.work[t], self.started[t]))
        elapsed_ms = self.work[token] / speed
        self.now_ms += elapsed_ms
        for other in self.work:
            self.work[other] -= elapsed_ms * speed
        del self.work[token]
        return token, int(self.now_ms - self.started.pop(token))


class Clients:
    """``count`` callers that always want a slot: each ended call asks again at once, so the
    endpoint's queue is never empty (the limit is what holds them back)."""

    def __init__(self, client: redis.Redis, spec: str, count: int) -> None:
        self.client = client
        self.spec = spec
        self._acquire = lua.register(client, "worker.limits", "slot_acquire")
        self._release = lua.register(client, "worker.limits", "slot_release")
        self.running: list[str] = []
        self.most_in_flight = 0
        for n in range(count):
            self._ask(f"c{n}")

    def _ask(self, token: str) -> None:
        args = [self.spec, TTL_MS, token, "1000:5000", 0, 0, 4, "t", "1.0", OWNER, 0]
        if int(self._acquire(keys=SLOT_KEYS, args=args)[0]) == 1:
            self.running.append(token)
            self.most_in_flight = max(self.most_in_flight, len(self.running))
            assert len(self.running) <= self.limit()  # never over the limit in force

    def end_one(self, latency: Latency, signal: str = "ok") -> None:
        """The oldest call ends, measured at the calls now in flight; the slot goes on."""
        token = self.running.pop(0)
        ms = int(latency(len(self.running) + 1))
        sample = f"{ms}:{TOKENS}:{signal}"
        args = [token, "ok", 5, "1000:5000", 0, self.spec, 0, "", sample]
        self._release(keys=SLOT_KEYS, args=args)
        while (granted := self.client.lpop(OWNER)) is not None:
            self._ask(granted.decode())
        self._ask(token)  # it wants another call

    def end_timed(self, server: Server) -> None:
        """The call that finishes first on ``server`` ends, measured from its start."""
        for running in self.running:
            server.start(running)  # (those it runs already go on)
        token, ms = server.finish_next(self.running)
        self.running.remove(token)
        args = [token, "ok", 5, "1000:5000", 0, self.spec, 0, "", f"{ms}:{TOKENS}:ok"]
        self._release(keys=SLOT_KEYS, args=args)
        while (granted := self.client.lpop(OWNER)) is not None:
            self._ask(granted.decode())
        self._ask(token)

    def run_timed(self, calls: int, server: Server) -> list[int]:
        """End ``calls`` calls on ``server``; the limit in force after each."""
        seen = []
        for _ in range(calls):
            self.end_timed(server)
            seen.append(self.limit())
        return seen

    def run(self, calls: int, latency: Latency) -> list[int]:
        """End ``calls`` calls; the limit in force after each."""
        seen = []
        for _ in range(calls):
            self.end_one(latency)
            seen.append(self.limit())
        return seen

    def limit(self) -> int:
        raw = self.client.hget(keys.auto_limit(EP), "limit")
        return in_force(raw, BOUNDS) if self.spec.startswith("auto") else int(self.spec)


BOUNDS = AutoBounds(1, 32)
SPEC = limit_spec(EP, BOUNDS)


def test_the_limit_starts_at_the_min_and_rises_to_the_max_while_latency_holds(
    redis_client: redis.Redis,
) -> None:
    clients = Clients(redis_client, SPEC, 60)
    assert clients.limit() == 1 and len(clients.running) == 1  # nothing measured yet
    seen = clients.run(600, lambda n: 100.0)
    assert seen[-1] == BOUNDS.high
    assert max(seen) <= BOUNDS.high
    assert clients.most_in_flight == BOUNDS.high


def test_past_the_knee_the_limit_backs_off_and_stays_near_it(redis_client: redis.Redis) -> None:
    clients = Clients(redis_client, SPEC, 60)
    seen = clients.run(1500, batching(knee=8))
    late = seen[500:]
    assert max(seen[:200]) >= 8  # it rose above the min, to the knee
    assert max(late) <= 10
    # At the knee or one above it, but for its probes of the no-load latency (at half).
    near = [limit for limit in late if 8 <= limit <= 9]
    assert len(near) >= 0.95 * len(late)
    assert late.count(8) > late.count(9)


def test_the_knee_moving_is_found_again(redis_client: redis.Redis) -> None:
    clients = Clients(redis_client, SPEC, 60)
    clients.run(800, batching(knee=8))
    down = clients.run(800, batching(knee=3))
    assert max(down[-300:]) <= 5
    up = clients.run(1500, batching(knee=16))
    assert min(up[-300:]) >= 12


def test_an_overload_backs_off_at_once_and_once_per_window(redis_client: redis.Redis) -> None:
    clients = Clients(redis_client, SPEC, 60)
    clients.run(600, lambda n: 100.0)
    assert clients.limit() == 32
    clients.end_one(lambda n: 100.0, signal="overload")
    assert clients.limit() == 24  # x 0.75
    clients.end_one(lambda n: 100.0, signal="overload")
    assert clients.limit() == 24  # the same window: not twice


def test_an_endpoint_slower_at_every_concurrency_is_probed_not_starved(
    redis_client: redis.Redis,
) -> None:
    clients = Clients(redis_client, SPEC, 60)
    clients.run(600, batching(knee=16))
    before = clients.limit()
    assert before >= 12
    # A slower model: four times the latency whatever the load. Without the probes of the
    # no-load latency, every window would look congested and the limit would sink to the min.
    slower = batching(knee=16, base_ms=400.0)
    seen = clients.run(2000, slower)
    assert sorted(seen[-300:])[150] >= 12  # the median: back near the knee
    assert float(redis_client.hget(keys.auto_limit(EP), "min") or 0) > 30  # ms per token


def test_an_unused_limit_does_not_grow(redis_client: redis.Redis) -> None:
    clients = Clients(redis_client, SPEC, 2)  # two callers: never more than two in flight
    seen = clients.run(400, lambda n: 100.0)
    assert max(seen) <= 3


def test_a_fixed_cap_is_kept_and_no_controller_state_is_written(
    redis_client: redis.Redis,
) -> None:
    clients = Clients(redis_client, limit_spec(EP, 3), 10)
    clients.run(200, batching(knee=1))
    assert clients.most_in_flight == 3
    assert redis_client.exists(keys.auto_limit(EP)) == 0


def test_the_state_lives_a_day_after_the_last_sample(redis_client: redis.Redis) -> None:
    clients = Clients(redis_client, SPEC, 4)
    for _ in itertools.repeat(None, 5):
        clients.end_one(lambda n: 100.0)
    ttl_ms = redis_client.pttl(keys.auto_limit(EP))
    assert 86_000_000 < ttl_ms <= 86_400_000


def _outside_probes(client: redis.Redis, clients: Clients, calls: int, server: Server) -> list[int]:
    """The limit in force after each of ``calls`` calls on ``server``, but for those during
    a probe of the no-load latency (a window at half the limit, by design)."""
    seen = []
    for _ in range(calls):
        clients.end_timed(server)
        if not client.hexists(keys.auto_limit(EP), "restore"):
            seen.append(clients.limit())
    return seen


def test_the_knee_moving_down_is_found_without_a_dip_below_it(redis_client: redis.Redis) -> None:
    # Calls that started under the old limit end slow, with the load they ran in: they must not
    # cut the new limit again (it sank to the min in the batching bench before they were
    # skipped).
    clients = Clients(redis_client, SPEC, 60)
    server = Server(knee=8)
    _outside_probes(redis_client, clients, 800, server)
    assert clients.limit() in (8, 9)
    server.knee = 4
    down = _outside_probes(redis_client, clients, 800, server)
    assert min(down) >= 4  # never under the new knee
    assert max(down[100:]) <= 5
    assert sorted(down[100:])[len(down[100:]) // 2] == 4  # the median: the knee


def test_a_high_knee_is_not_overshot(redis_client: redis.Redis) -> None:
    # Past a knee of 16, latency grows by under 15 % a slot ((17 / 16) ** 1.5 = 1.095): it is
    # the throughput the rise did not buy that brings the limit back.
    clients = Clients(redis_client, SPEC, 60)
    server = Server(knee=16)
    late = _outside_probes(redis_client, clients, 2000, server)[1000:]
    assert set(late) <= {16, 17}
    assert late.count(16) > 2 * late.count(17)


def test_the_samples_of_calls_started_before_a_cut_are_not_kept(
    redis_client: redis.Redis,
) -> None:
    clients = Clients(redis_client, SPEC, 60)
    server = Server(knee=8)
    clients.run_timed(400, server)
    server.knee = 2
    for _ in range(200):
        clients.end_timed(server)
        assert set(_stale(redis_client)) <= set(
            clients.running
        )  # only calls still in flight are listed


def test_an_overload_of_a_call_started_before_the_last_change_is_dropped(
    redis_client: redis.Redis,
) -> None:
    clients = Clients(redis_client, SPEC, 60)
    server = Server(knee=64)  # room everywhere: the limit only rises
    while not (stale := _stale(redis_client)) or clients.limit() < 8:
        clients.end_timed(server)
    before = clients.limit()
    for _ in stale:  # each ends with a 429: they started under the limit before
        assert clients.running[0] in stale
        clients.end_one(lambda n: 100.0, signal="overload")
        assert clients.limit() == before
    assert clients.running[0] not in stale
    clients.end_one(lambda n: 100.0, signal="overload")
    assert clients.limit() == int(before * 0.75)


def _stale(client: redis.Redis) -> list[str]:
    return (client.hget(keys.auto_limit(EP), "stale") or b"").decode().split()
