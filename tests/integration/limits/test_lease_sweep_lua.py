"""worker/limits/scripts/lease_sweep.lua against a real Redis: a dead process's slot and places
go at once, a stalled process's slot stays, and without a list of connections the TTL decides."""

from __future__ import annotations

import time

import redis

from tests.integration.limits.test_admission_lua import LEASE, OWNER, QUEUE, Endpoint
from worker import keys, lua

SWEPT = keys.lease_swept("ep")
TTL_MS, STALL_MS = 30_000, 15_000


def _sweep(client: redis.Redis, live: str, self_id: str = "me") -> list[int]:
    script = lua.register(client, "worker.limits", "lease_sweep")
    answer = script(keys=[LEASE, *QUEUE, SWEPT], args=[1, 0, TTL_MS, STALL_MS, self_id, live])
    return [int(n) for n in answer]


def test_a_dead_processs_slot_and_waiters_go_to_the_next_at_once(
    redis_client: redis.Redis,
) -> None:
    endpoint = Endpoint(redis_client)
    assert endpoint.ask("dead.call") == 1
    assert endpoint.ask("dead.w1") == 0
    assert endpoint.ask("dead.w2") == 0
    assert endpoint.ask("live.w3") == 0
    # "dead"'s connection is gone, "live"'s is open: the slot goes past dead's two waiters.
    assert _sweep(redis_client, "live,me") == [1, 3]
    assert redis_client.lpop(OWNER) == b"live.w3"
    assert [m.decode() for m in redis_client.zrange(LEASE, 0, -1)] == ["live.w3"]
    assert redis_client.zcard(QUEUE[0]) == 0
    assert not redis_client.hexists(SWEPT, "dead")


def test_a_process_gone_leaves_no_field_behind(redis_client: redis.Redis) -> None:
    for proc in ("a", "b", "c"):
        _sweep(redis_client, "a,b,c", self_id=proc)
    _sweep(redis_client, "a", self_id="a")  # b and c exited
    assert redis_client.hkeys(SWEPT) == [b"a"]


def test_a_stalled_processs_slot_is_kept_past_its_lease(redis_client: redis.Redis) -> None:
    endpoint = Endpoint(redis_client)
    assert endpoint.ask("stalled.call") == 1
    assert endpoint.ask("live.w1") == 0
    redis_client.zadd(LEASE, {"stalled.call": 1})  # its lease lapsed: nobody renewed it
    # Its connection is open and it has not swept for longer than a stall: renewed for it.
    assert _sweep(redis_client, "stalled,live,me") == [0, 0]
    expiry = redis_client.zscore(LEASE, "stalled.call")
    assert expiry is not None and expiry > time.time() * 1000 + TTL_MS - 5_000
    assert redis_client.lpop(OWNER) is None


def test_a_live_processs_forgotten_lease_still_lapses(redis_client: redis.Redis) -> None:
    endpoint = Endpoint(redis_client)
    assert endpoint.ask("busy.leaked") == 1
    assert endpoint.ask("busy.w1") == 0
    _sweep(redis_client, "busy,me", self_id="busy")  # "busy" sweeps: it is not stalled
    redis_client.zadd(LEASE, {"busy.leaked": 1})  # a lease it no longer renews
    assert _sweep(redis_client, "busy,me") == [1, 0]
    assert redis_client.lpop(OWNER) == b"busy.w1"


def test_without_a_list_of_connections_the_ttl_decides(redis_client: redis.Redis) -> None:
    endpoint = Endpoint(redis_client)
    assert endpoint.ask("gone.call") == 1
    assert endpoint.ask("gone.w1") == 0
    assert _sweep(redis_client, "-") == [0, 0]  # not known dead: the lease stands
    redis_client.zadd(LEASE, {"gone.call": 1})
    assert _sweep(redis_client, "-") == [1, 0]  # lapsed: the slot goes (to its own waiter)
    assert redis_client.lpop(OWNER) == b"gone.w1"
