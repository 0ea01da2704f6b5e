"""worker.limits.presence against a real Redis: a process is live while its connection is open."""

from __future__ import annotations

import time

import redis

from worker.limits import presence


def test_a_process_is_live_while_its_presence_connection_is_open(
    redis_client: redis.Redis,
) -> None:
    mine = presence.Presence(redis_client)
    try:
        assert mine.token().startswith(f"{mine.id}.")
        assert mine.token() != mine.token()
        live = presence.live_ids(redis_client)
        assert live is not None and mine.id in live
    finally:
        mine.close()
    for _ in range(50):  # Redis frees a closed connection's client as it reads the close
        live = presence.live_ids(redis_client)
        assert live is not None
        if mine.id not in live:
            break
        time.sleep(0.02)
    assert mine.id not in live
