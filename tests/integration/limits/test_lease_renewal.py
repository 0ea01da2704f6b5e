"""The guard's lease heartbeat, against a real Redis: the lease of a call still running comes
back when Redis lost it (it lapsed during an outage longer than a lease, or Redis restarted
without it), so the cap keeps counting the call; a lease whose release is done, or left to the
end script, never comes back."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from worker import keys
from worker.limits.guard import EndpointGuard, GuardPolicy, Outcome

pytestmark = pytest.mark.timeout(30)

#: Short leases: the heartbeat renews every third of one (0.2 s).
LEASE_TTL_S = 0.6
LEASE = keys.lease("ep")


@pytest.fixture
def guard(redis_client: redis.Redis) -> Iterator[EndpointGuard]:
    guard = EndpointGuard(redis_client, "ep", GuardPolicy(limit=1, lease_ttl_s=LEASE_TTL_S))
    yield guard
    guard.close()


def _within(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _renewals(count: int = 3) -> None:
    """Long enough for ``count`` heartbeats."""
    time.sleep(LEASE_TTL_S / 3 * count + 0.1)


def test_the_lease_of_a_running_call_comes_back_when_redis_lost_it(
    redis_client: redis.Redis, guard: EndpointGuard
) -> None:
    with guard.slot() as slot:
        assert redis_client.zrange(LEASE, 0, -1) == [slot.token.encode()]
        redis_client.delete(LEASE)  # lapsed and pruned, or a Redis that restarted empty
        assert _within(lambda: redis_client.zrange(LEASE, 0, -1) == [slot.token.encode()])
        # Counted again: another worker finds the cap (1) taken.
        expiry_ms = redis_client.zscore(LEASE, slot.token)
        assert expiry_ms is not None and expiry_ms > time.time() * 1000
        slot.outcome = Outcome.OK
    assert redis_client.zcard(LEASE) == 0
    _renewals()
    assert redis_client.zcard(LEASE) == 0  # released: never renewed back


def test_a_handed_off_lease_is_renewed_only_while_it_exists(
    redis_client: redis.Redis, guard: EndpointGuard
) -> None:
    """The call ended; the end script releases its slot. Once released (here: gone), the
    heartbeat does not bring it back before :meth:`EndpointGuard.settle`."""
    with guard.slot() as slot:
        slot.outcome = Outcome.OK
        release = guard.hand_off(slot)
    assert redis_client.zrange(LEASE, 0, -1) == [slot.token.encode()]
    _renewals()
    assert redis_client.zrange(LEASE, 0, -1) == [slot.token.encode()]  # still renewed
    redis_client.zrem(LEASE, slot.token)  # what the end script's release does
    _renewals()
    assert redis_client.zcard(LEASE) == 0
    guard.settle(release)
