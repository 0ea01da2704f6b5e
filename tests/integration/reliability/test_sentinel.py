"""Redis Sentinel: with ``REDIS_URL=sentinel://...`` genqueue follows the primary through a
failover. A primary, a replica and three sentinels run on loopback
(tests/integration/reliability/sentinel_cluster.py); the primary is killed while workers and the
API are busy."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.reliability.conftest import wait_for
from tests.integration.reliability.sentinel_cluster import Node, SentinelCluster
from worker.celery_app import GenQueueCelery, celery_config
from worker.redis_io import connections
from worker.settings import Settings

pytestmark = pytest.mark.timeout(240)

PROMPT = re.compile(r"failover task \d+")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    started = SentinelCluster(tmp_path / "sentinel").start()
    yield started
    started.stop()


@dataclass
class Submitter:
    """POSTs a task every ``every_s`` until stopped, and notes every answer and when."""

    api_url: str
    auth: dict[str, str]
    every_s: float = 0.1
    accepted: dict[str, str] = field(default_factory=dict)  # task id -> prompt
    refused: list[tuple[float, int]] = field(default_factory=list)  # (time, status)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        number = 0
        while not self.stop.is_set():
            number += 1
            prompt = f"failover task {number}"
            body = {"prompt": prompt, "params": {"max_tokens": 4}}
            response = requests.post(
                f"{self.api_url}/v1/tasks", json=body, headers=self.auth, timeout=30
            )
            if response.status_code == 202:
                self.accepted[str(response.json()["task_id"])] = prompt
            else:
                self.refused.append((time.monotonic(), response.status_code))
            time.sleep(self.every_s)


def final_status(api_url: str, auth: dict[str, str], task_id: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = requests.get(f"{api_url}/v1/tasks/{task_id}?wait=5", headers=auth, timeout=15)
        if response.status_code == 200 and response.json()["status"] in (
            "succeeded",
            "failed",
            "cancelled",
        ):
            return str(response.json()["status"])
        time.sleep(0.2)
    return "unfinished"


def prompts_called(simulator: Any) -> Counter[str]:
    """How often each task's prompt reached the endpoint (inside the model's chat template)."""
    bodies = simulator.stats()["last_bodies"]
    return Counter(m.group(0) for b in bodies if (m := PROMPT.search(str(b.get("prompt")))))


def test_workers_and_the_api_carry_on_through_a_failover(
    cluster: SentinelCluster,
    api_factory: Any,
    auth: dict[str, str],
    simulator: Any,
    start_worker: Any,
) -> None:
    simulator.configure(latency_s=0.5)  # tasks are in flight when the primary dies
    worker = start_worker(cluster.url, simulator.url)
    api = api_factory(cluster.url)
    submitter = Submitter(api.url, auth)
    thread = threading.Thread(target=submitter.run, daemon=True)
    thread.start()
    wait_for(lambda: len(submitter.accepted) >= 15, 30, "tasks before the failover")

    old = cluster.primary()
    old.kill()
    killed_at = time.monotonic()
    election_s = cluster.wait_failover(old.port)
    accepted_before = len(submitter.accepted)
    wait_for(lambda: len(submitter.accepted) >= accepted_before + 15, 30, "tasks after it")
    submitter.stop.set()
    thread.join(30)

    statuses = {task_id: final_status(api.url, auth, task_id, 90) for task_id in submitter.accepted}
    assert Counter(statuses.values()) == {"succeeded": len(submitter.accepted)}
    # Each accepted task's prompt reached the endpoint once (no worker died).
    called = prompts_called(simulator)
    assert sum(called.values()) < 100, "simulator keeps the last 100 bodies only"
    assert all(called[prompt] == 1 for prompt in submitter.accepted.values()), called
    assert max(called.values()) == 1
    # The API refused only with 503, and only until the new primary was elected.
    assert {code for _, code in submitter.refused} <= {503}
    refused_for_s = max((at - killed_at for at, _ in submitter.refused), default=0.0)
    print(f"election {election_s:.1f}s, last 503 {refused_for_s:.1f}s after the kill")
    assert refused_for_s <= election_s + 2.0
    # The same worker process reconnected to the new primary (gevent prints the traceback of
    # Celery's remote-control greenlet, which Celery starts again with the consumer).
    assert worker.process.poll() is None
    assert worker.log().count("] Connected to sentinel://") == 2
    assert "Cannot connect" in worker.log()


INCR = "return redis.call('INCR', KEYS[1])"


def _stale_connection_to(client: Any, node: Node) -> None:
    """Leave in ``client``'s pool a connection to ``node``, as one to a primary that was
    demoted since (sentinels kill such connections when they reconfigure a server; a partition
    that heals, or a client that asked a sentinel just before the election, can keep one)."""
    connection = client.connection_pool.get_connection()
    connection.disconnect()
    connection.connect_to(("127.0.0.1", node.port))
    client.connection_pool.release(connection)


def test_a_connection_to_a_demoted_primary_reconnects_to_the_new_one(
    cluster: SentinelCluster,
) -> None:
    settings = Settings(redis_url=cluster.url)
    client = connections.sync_client(settings, max_connections=1)
    script = client.register_script(INCR)
    assert script(keys=["n"]) == 1
    replica = next(node for node in cluster.servers if node.port != cluster.primary_port())
    _stale_connection_to(client, replica)
    # A Lua script's write meets the replica's READONLY inside a script error, a plain write
    # meets it as is: both run again on the primary instead of failing.
    assert script(keys=["n"]) == 2
    _stale_connection_to(client, replica)
    assert client.incr("n") == 3
    primary = cluster.redis_client(cluster.primary())
    assert primary.get("n") == b"3"
    client.close()
    primary.close()


def test_an_asyncio_connection_to_a_demoted_primary_reconnects(cluster: SentinelCluster) -> None:
    replica = next(node for node in cluster.servers if node.port != cluster.primary_port())

    async def run() -> list[int]:
        client = connections.async_client(Settings(redis_url=cluster.url), max_connections=1)
        script = client.register_script(INCR)
        answers = [await script(keys=["n"])]
        connection = await client.connection_pool.get_connection()
        await connection.disconnect()
        await connection.connect_to(("127.0.0.1", replica.port))
        await client.connection_pool.release(connection)
        answers.append(await script(keys=["n"]))
        await client.aclose()
        return answers

    assert asyncio.run(run()) == [1, 2]


@pytest.fixture
def locked_cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    """Redis and the sentinels each with a password of their own."""
    started = SentinelCluster(
        tmp_path / "sentinel", sentinel_password=SENTINEL_SECRET, redis_password=REDIS_SECRET
    ).start()
    yield started
    started.stop()


SENTINEL_SECRET = "sentinel-secret-4c1d"
REDIS_SECRET = "redis-secret-9a7b"


def _status_once(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GENQUEUE_", "RUNPOD_"))}
    clean.update(REDIS_URL=url, **env)
    return subprocess.run(
        [sys.executable, "-m", "genqueue", "status", "--once"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_passwords_for_redis_and_for_the_sentinels(
    locked_cluster: SentinelCluster, api_factory: Any
) -> None:
    url = locked_cluster.url
    done = _status_once(url, GENQUEUE_REDIS_SENTINEL_PASSWORD=SENTINEL_SECRET)
    assert done.returncode == 0, done.stderr
    refused = _status_once(url, GENQUEUE_REDIS_SENTINEL_PASSWORD="wrong")
    assert refused.returncode == 1
    assert "no sentinel names a reachable primary" in refused.stderr
    for secret in (SENTINEL_SECRET, REDIS_SECRET, "wrong"):
        assert secret not in refused.stderr + refused.stdout
    # The API's metrics reader, and Celery's result backend, on the primary the sentinels name.
    api = api_factory(url, redis_sentinel_password=SENTINEL_SECRET)
    scraped = requests.get(f"{api.url}/metrics", timeout=10).text
    assert "genqueue_redis_up 1.0" in scraped
    settings = Settings(redis_url=url, redis_sentinel_password=SENTINEL_SECRET)
    app = GenQueueCelery("sentinel-test", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.backend.store_result("t-1", {"ok": True}, "SUCCESS")
    assert app.backend.get_task_meta("t-1")["result"] == {"ok": True}
    primary = locked_cluster.redis_client(locked_cluster.primary())
    assert primary.exists(app.backend.get_key_for_task("t-1")) == 1
    primary.close()
