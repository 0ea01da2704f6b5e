"""A submission waits for a replica (Redis's ``WAIT``) before the API acknowledges it, so that a
failover cannot lose a task the caller was told exists (docs/redis.md)."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from tests.integration.reliability.sentinel_cluster import SentinelCluster
from worker import keys
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)

BODY = {"prompt": "How can I make a cake?", "params": {"max_tokens": 4}}


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[SentinelCluster]:
    """A primary and its replica (one sentinel, unused here)."""
    started = SentinelCluster(tmp_path / "pair").start(replicas=1, sentinels=1)
    yield started
    started.stop()


def _wait_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def test_the_api_acknowledges_a_submission_once_a_replica_has_it(
    pair: SentinelCluster, api_factory, auth, caplog
) -> None:
    primary, replica = pair.servers
    url = f"redis://127.0.0.1:{primary.port}/0"
    api = api_factory(url, redis_submit_replicas=1, redis_submit_wait_ms=1500)
    on_primary, on_replica = pair.redis_client(primary), pair.redis_client(replica)

    accepted = requests.post(f"{api.url}/v1/tasks", json=BODY, headers=auth, timeout=10)
    assert accepted.status_code == 202
    task_id = accepted.json()["task_id"]
    assert on_replica.exists(keys.task_record(task_id)) == 1  # there when 202 was answered
    assert _wait_calls(on_primary) == 1

    # A replica that does not answer: the task is accepted after the wait, and it is said.
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        with caplog.at_level(logging.WARNING, logger="genqueue.api"):
            late = requests.post(f"{api.url}/v1/tasks", json=BODY, headers=auth, timeout=10)
        # The next ones do not wait for it again, for a while.
        next_one = requests.post(f"{api.url}/v1/tasks", json=BODY, headers=auth, timeout=10)
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    assert late.status_code == 202 and next_one.status_code == 202
    assert on_primary.exists(keys.task_record(late.json()["task_id"])) == 1
    assert _wait_calls(on_primary) == 2
    assert "reached 0 of 1 Redis replicas within 1500 ms" in caplog.text
    on_primary.close()
    on_replica.close()


def test_a_plain_redis_waits_for_no_replica_unless_told() -> None:
    assert Settings(redis_url="redis://127.0.0.1:6390/0").submit_replicas == 0
    sentinel = Settings(redis_url="sentinel://127.0.0.1:26379/0")
    assert sentinel.submit_replicas == 1
    told = Settings(redis_url="sentinel://127.0.0.1:26379/0", redis_submit_replicas=0)
    assert told.submit_replicas == 0
