"""``?wait=`` on one pub/sub connection per API process, against a real ``genqueue api``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import requests

from api_producer.client import GenQueueClient, RateLimited, TaskFailed
from api_producer.producers.direct import DirectProducer, make_plan
from api_producer.store import WAIT_READS
from genqueue.embedded_redis import free_port
from tests.integration.api.conftest import API_KEY, API_TENANT
from worker import keys
from worker.contract import GenerationRequest
from worker.delivery import records
from worker.redis_io import connections
from worker.settings import Settings

WAITERS = 2000
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@contextlib.contextmanager
def api_process(redis_url: str, tmp_path: Path, **env: str) -> Iterator[str]:
    """``genqueue api`` in one process of its own; its base URL."""
    port = free_port()
    full_env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "GENQUEUE_API_PROCESSES": "1",
        "GENQUEUE_API_KEYS": API_KEY,
        "GENQUEUE_LOG_LEVEL": "WARNING",
        **env,
    }
    with (tmp_path / "api.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "genqueue", "api", "--port", str(port)],
            cwd=tmp_path,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "api.log").read_text()
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "genqueue api did not start"
            time.sleep(0.1)
        yield url
    finally:
        process.kill()
        process.wait(10)


def enqueue(redis_url: str, count: int) -> list[str]:
    settings = Settings(redis_url=redis_url)
    client = connections.sync_client(settings)
    producer = DirectProducer(settings, client, make_plan(settings, client))
    try:
        request = GenerationRequest(
            prompt="question", template="raw", params={"max_tokens": 4}, tenant=API_TENANT
        )
        return producer.submit_many([request] * count).task_ids
    finally:
        producer.close()


def api_clients(client: redis.Redis) -> int:
    """Connections open on Redis, the test's own excluded."""
    return len(client.client_list()) - 1


def subscribed(client: redis.Redis, task_ids: list[str]) -> bool:
    channels = [keys.celery_result(task_id) for task_id in task_ids]
    counts = client.pubsub_numsub(*channels)
    return all(count >= 1 for _, count in counts)


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s}s"
        time.sleep(0.1)


async def wait_all(url: str, task_ids: list[str], wait_s: float) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(task_ids) + 10, max_keepalive_connections=0)
    timeout = httpx.Timeout(wait_s + 30)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, limits=limits, timeout=timeout) as c:
        calls = [c.get(f"/v1/tasks/{task_id}", params={"wait": wait_s}) for task_id in task_ids]
        return await asyncio.gather(*calls)


def in_thread(coro: Any) -> Any:
    """Run ``coro`` on an event loop of its own thread; a future of its result."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(asyncio.run, coro)
    pool.shutdown(wait=False)
    return future


@pytest.mark.timeout(180)
def test_2000_waiters_share_one_connection_and_all_get_their_answer(
    redis_url, redis_client, tmp_path, simulator, start_worker
) -> None:
    task_ids = enqueue(redis_url, WAITERS)
    with api_process(redis_url, tmp_path) as url:
        idle = api_clients(redis_client)
        answers = in_thread(wait_all(url, task_ids, 60))
        wait_for(lambda: subscribed(redis_client, task_ids), 60, "subscription of every waiter")
        # Every waiter is waiting: the API holds a few connections (one pub/sub, the status
        # reads of waits taking turns), not one per waiter.
        holding = api_clients(redis_client)
        assert holding <= idle + WAIT_READS + 2, (idle, holding)
        assert not answers.done()

        start_worker(redis_url, simulator.url)
        responses = answers.result(timeout=120)
    assert [r.status_code for r in responses] == [200] * WAITERS
    assert {r.json()["status"] for r in responses} == {"succeeded"}
    assert [r.json()["task_id"] for r in responses] == task_ids


@pytest.mark.timeout(60)
def test_waiters_past_the_bound_get_429_at_once(redis_url, redis_client, tmp_path) -> None:
    task_ids = enqueue(redis_url, 3)
    with api_process(redis_url, tmp_path, GENQUEUE_API_MAX_WAITERS="2") as url:
        held = in_thread(wait_all(url, task_ids[:2], 20))
        wait_for(lambda: subscribed(redis_client, task_ids[:2]), 20, "two waiters")
        started = time.monotonic()
        refused = requests.get(f"{url}/v1/tasks/{task_ids[2]}?wait=20", headers=AUTH, timeout=10)
        assert time.monotonic() - started < 5
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert "GENQUEUE_API_MAX_WAITERS" in refused.json()["detail"]
        # Without ?wait= the status is still there.
        plain = requests.get(f"{url}/v1/tasks/{task_ids[2]}", headers=AUTH, timeout=10)
        assert plain.status_code == 200 and plain.json()["status"] == "queued"
        for task_id in task_ids[:2]:
            requests.delete(f"{url}/v1/tasks/{task_id}", headers=AUTH, timeout=10)
        assert {r.json()["status"] for r in held.result(timeout=30)} == {"cancelled"}


@pytest.mark.timeout(60)
def test_the_client_waits_again_after_a_429(redis_url, redis_client, tmp_path) -> None:
    task_ids = enqueue(redis_url, 3)
    with api_process(redis_url, tmp_path, GENQUEUE_API_MAX_WAITERS="2") as url:
        held = in_thread(wait_all(url, task_ids[:2], 20))
        wait_for(lambda: subscribed(redis_client, task_ids[:2]), 20, "two waiters")
        with GenQueueClient(url, api_key=API_KEY) as client:
            with pytest.raises(RateLimited) as refused:
                client.get(task_ids[2], wait_s=5)
            assert refused.value.retry_after_s == 1.0
            waiting = concurrent.futures.ThreadPoolExecutor(1).submit(client.wait, task_ids[2], 30)
            time.sleep(1.5)  # refused at least once while both places are held
            for task_id in task_ids[:2]:
                requests.delete(f"{url}/v1/tasks/{task_id}", headers=AUTH, timeout=10)
            requests.delete(f"{url}/v1/tasks/{task_ids[2]}", headers=AUTH, timeout=10)
            with pytest.raises(TaskFailed) as ended:
                waiting.result(timeout=30)
        assert ended.value.status.status.value == "cancelled"
        assert {r.json()["status"] for r in held.result(timeout=30)} == {"cancelled"}


@pytest.mark.timeout(60)
def test_a_task_finished_while_pubsub_reconnects_is_answered_by_the_deadline(
    redis_url, redis_client, tmp_path
) -> None:
    [task_id] = enqueue(redis_url, 1)
    channel = keys.celery_result(task_id)
    with api_process(redis_url, tmp_path) as url:
        started = time.monotonic()
        answer = in_thread(wait_all(url, [task_id], 10))
        wait_for(lambda: subscribed(redis_client, [task_id]), 20, "the waiter's subscription")
        # Drop the listener's connection, and finish the task while it is away: the
        # completion's message is published to nobody.
        pipe = redis_client.pipeline(transaction=True)
        pipe.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        pipe.hset(keys.task_record(task_id), records.F_CANCEL, "1")
        pipe.set(channel, records.revoked_meta(task_id))
        pipe.publish(channel, records.revoked_meta(task_id))
        assert pipe.execute()[-1] == 0  # no subscriber heard it
        [response] = answer.result(timeout=30)
        took = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    # Re-read once the listener is subscribed again, well before the 10 s deadline (and at
    # the latest by the deadline's own re-read).
    assert took < 7
