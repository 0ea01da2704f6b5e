"""worker/delivery/scripts/release_claim.lua, renew_claims.lua and release_dead_claims.lua on
their own, against a real Redis."""

from __future__ import annotations

import redis

from worker import lua

A, B = "genqueue:running:a", "genqueue:running:b"


def test_release_deletes_only_the_claim_it_holds(redis_client: redis.Redis) -> None:
    release = lua.register(redis_client, "worker.delivery", "release_claim")
    redis_client.set(A, "mine")
    redis_client.set(B, "theirs")

    assert release(keys=[A], args=["mine"]) == 1
    assert release(keys=[B], args=["mine"]) == 0
    assert release(keys=["genqueue:running:gone"], args=["mine"]) == 0

    assert redis_client.get(A) is None
    assert redis_client.get(B) == b"theirs"


def test_renew_pushes_every_claim_and_takes_a_lapsed_one_again(
    redis_client: redis.Redis,
) -> None:
    renew = lua.register(redis_client, "worker.delivery", "renew_claims")
    redis_client.set(A, "token-a", px=1000)

    assert renew(keys=[A, B], args=[60_000, "token-a", "token-b"]) == 1

    assert redis_client.get(A) == b"token-a"
    assert 59_000 < redis_client.pttl(A) <= 60_000
    # B had lapsed (its holder could not renew it while Redis was away): taken again.
    assert redis_client.get(B) == b"token-b"
    assert 59_000 < redis_client.pttl(B) <= 60_000


def test_renew_never_overwrites_a_claim_that_exists(redis_client: redis.Redis) -> None:
    renew = lua.register(redis_client, "worker.delivery", "renew_claims")
    redis_client.set(A, "another-worker", px=1000)

    renew(keys=[A], args=[60_000, "mine"])

    assert redis_client.get(A) == b"another-worker"


def test_renew_with_no_claims_does_nothing(redis_client: redis.Redis) -> None:
    renew = lua.register(redis_client, "worker.delivery", "renew_claims")
    assert renew(keys=[], args=[60_000]) == 1
    assert redis_client.dbsize() == 0


def test_a_dead_process_claims_go_and_no_other(redis_client: redis.Redis) -> None:
    release = lua.named(redis_client, "worker.delivery", "release_dead_claims")
    redis_client.set(A, "deadbeef00000000.1234")
    redis_client.set(B, "deadbeef00000001.1234")  # another process, same first characters
    c = "genqueue:running:c"

    released = release(keys={"running_keys": [A, B, c]}, args={"prefix": "deadbeef00000000."})
    assert released == 1

    assert redis_client.get(A) is None
    assert redis_client.get(B) == b"deadbeef00000001.1234"
    assert redis_client.exists(c) == 0
