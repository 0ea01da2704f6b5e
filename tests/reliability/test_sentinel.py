"""Redis Sentinel: with ``REDIS_URL=sentinel://...`` genqueue follows the primary through a
failover. A primary, a replica and three sentinels run on loopback (tests/reliability/
sentinel_cluster.py); the primary is killed while workers and the API are busy."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.reliability.conftest import wait_for
from tests.reliability.sentinel_cluster import SentinelCluster

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
