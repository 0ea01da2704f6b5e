"""A worker killed while the backlog is sorted by tenant loses nothing: every message is in its
queue list, in its tenant's list or held as unacked, and another worker runs each task once
(docs/scheduling.md)."""

from __future__ import annotations

import pytest
import redis

from tests.integration.reliability.conftest import wait_for
from tests.integration.scheduling.test_backlog_fairness import requests_of, send_many
from worker import keys

pytestmark = pytest.mark.timeout(180)

FAST_REDELIVERY = {"GENQUEUE_VISIBILITY_TIMEOUT_S": 5, "GENQUEUE_HEARTBEAT_INTERVAL_S": 1}


def _sorted(client: redis.Redis) -> int:
    return sum(int(n) for n in client.hvals(keys.backlog_size()))


@pytest.mark.parametrize("moment", ["sorting", "sorted, held and calling"])
def test_a_worker_killed_at_any_step_of_the_backlog_loses_nothing(
    redis_url, redis_client, simulator, start_worker, celery_client, moment
) -> None:
    simulator.configure(latency_s=0.5)
    doomed = start_worker(
        redis_url, simulator.url, RUNPOD_MAX_CONCURRENCY=2, GENQUEUE_WORKER_CONCURRENCY=20,
        **FAST_REDELIVERY,
    )  # fmt: skip
    results = send_many(celery_client, requests_of("a", 1500) + requests_of("b", 50))
    if moment == "sorting":
        wait_for(lambda: _sorted(redis_client) > 0, 30, "the sort to start")
    else:
        wait_for(lambda: simulator.stats()["in_flight"] == 2, 30, "two calls")
        wait_for(lambda: redis_client.llen(keys.queue_for(None)) == 0, 30, "all of it sorted")
        assert _sorted(redis_client) > 1000
        # The window's, held as unacked (one fewer for a moment when a call ends: its ack
        # comes before the fetch that refills the window).
        wait_for(lambda: redis_client.hlen("unacked") >= 20, 10, "the window held as unacked")
    doomed.kill()
    simulator.configure(latency_s=0.0)
    start_worker(redis_url, simulator.url, RUNPOD_MAX_CONCURRENCY=2, **FAST_REDELIVERY)
    for result in results:
        assert result.get(timeout=120)["text"]
    stats = simulator.stats()
    # Each task called once, but the two in flight when the worker died (called again).
    assert len(results) <= stats["calls"] <= len(results) + 2
    assert _sorted(redis_client) == 0
    assert list(redis_client.scan_iter(match="genqueue:backlog*")) == []
