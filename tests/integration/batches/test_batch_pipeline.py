"""Batches through real workers: results complete and in order, counts, cancellation, priority."""

from __future__ import annotations

from datetime import datetime

import pytest
import redis
import requests

from tests.integration.batches.conftest import (
    expected_text,
    get_json,
    jsonl,
    line,
    post_batch,
    queue_depth,
    results,
    wait_for,
)


@pytest.mark.timeout(180)
def test_a_thousand_lines_come_back_complete_and_in_order(
    api, auth, simulator, start_worker, redis_url, batch_status
) -> None:
    start_worker(
        redis_url, simulator.url, GENQUEUE_WORKER_CONCURRENCY=200, RUNPOD_MAX_CONCURRENCY=200
    )
    response = post_batch(api, jsonl(line(i) for i in range(1000)), auth)
    assert response.status_code == 202, response.text
    batch_id = response.json()["batch_id"]

    final = wait_for(
        lambda: (s := batch_status(api, batch_id))["status"] == "completed" and s, 120, "end"
    )
    assert final["counts"] == {
        "queued": 0,
        "running": 0,
        "retrying": 0,
        "succeeded": 1000,
        "failed": 0,
        "cancelled": 0,
    }
    lines = results(api, batch_id, auth)
    assert [item["custom_id"] for item in lines] == [f"req-{i}" for i in range(1000)]
    assert len({item["task_id"] for item in lines}) == 1000
    for index, item in enumerate(lines):
        assert item["status"] == "succeeded" and item["error"] is None
        assert item["result"]["text"] == expected_text(index)
        assert item["result"]["text"]
    assert simulator.stats()["calls"] == 1000


@pytest.mark.timeout(90)
def test_counts_by_state(api, auth, simulator, start_worker, redis_url, batch_status) -> None:
    batch_id = post_batch(api, jsonl(line(i) for i in range(6)), auth).json()["batch_id"]
    last = results(api, batch_id, auth)[5]["task_id"]
    requests.delete(f"{api.url}/v1/tasks/{last}", headers=auth, timeout=10).raise_for_status()
    status = batch_status(api, batch_id)
    assert status["status"] == "running"  # one task is final already
    assert status["counts"]["queued"] == 5 and status["counts"]["cancelled"] == 1

    # One at a time: two permanent failures, then a slow call to catch running.
    simulator.script({"status": 400}, {"status": 400}, {"delay_s": 3})
    start_worker(redis_url, simulator.url, GENQUEUE_WORKER_CONCURRENCY=1, RUNPOD_MAX_CONCURRENCY=1)
    running = wait_for(
        lambda: (
            (s := batch_status(api, batch_id))["counts"]["failed"] == 2
            and s["counts"]["running"] == 1
            and s
        ),
        30,
        "a slow call",
    )
    assert running["status"] == "running"
    assert running["counts"] == {
        "queued": 2,
        "running": 1,
        "retrying": 0,
        "succeeded": 0,
        "failed": 2,
        "cancelled": 1,
    }
    final = wait_for(
        lambda: (s := batch_status(api, batch_id))["status"] == "completed" and s, 60, "the end"
    )
    assert final["counts"] == {
        "queued": 0,
        "running": 0,
        "retrying": 0,
        "succeeded": 3,
        "failed": 2,
        "cancelled": 1,
    }
    lines = results(api, batch_id, auth)
    assert [item["status"] for item in lines] == ["failed"] * 2 + ["succeeded"] * 3 + ["cancelled"]
    assert lines[0]["error"]["type"] == "endpoint_rejected" and lines[0]["result"] is None


@pytest.mark.timeout(90)
def test_a_batch_cancelled_while_queued_never_reaches_the_endpoint(
    api, auth, simulator, start_worker, redis_url, redis_client: redis.Redis
) -> None:
    batch_id = post_batch(api, jsonl(line(i) for i in range(50)), auth).json()["batch_id"]
    cancelled = requests.delete(f"{api.url}/v1/batches/{batch_id}", headers=auth, timeout=30)
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["counts"]["cancelled"] == 50
    start_worker(redis_url, simulator.url)
    # The worker takes every message and drops it (the queue and its unacked set empty).
    wait_for(
        lambda: queue_depth(redis_client) == 0 and redis_client.hlen("unacked") == 0, 30, "drain"
    )
    assert simulator.stats()["calls"] == 0
    status = get_json(api, f"/v1/batches/{batch_id}", auth)
    assert status["counts"]["cancelled"] == 50 and status["status"] == "cancelled"


@pytest.mark.timeout(120)
def test_interactive_tasks_overtake_a_batch_backlog(
    api, auth, simulator, start_worker, redis_url, batch_status
) -> None:
    batch_id = post_batch(api, jsonl(line(i) for i in range(300)), auth).json()["batch_id"]
    task = {"prompt": "urgent", "template": "raw", "params": {"max_tokens": 4}}
    submitted = requests.post(f"{api.url}/v1/tasks", json=task, headers=auth, timeout=10)
    task_id = submitted.json()["task_id"]
    start_worker(redis_url, simulator.url, GENQUEUE_WORKER_CONCURRENCY=1, RUNPOD_MAX_CONCURRENCY=1)
    interactive = wait_for(
        lambda: (t := get_json(api, f"/v1/tasks/{task_id}", auth))["status"] == "succeeded" and t,
        60,
        "the interactive task",
    )
    finished_at = datetime.fromisoformat(interactive["finished_at"])
    # Sent last, it ran before most of the batch (one batch task may have been taken first).
    lines = results(api, batch_id, auth)
    done_before = 0
    for item in lines[:50]:
        status = get_json(api, f"/v1/tasks/{item['task_id']}", auth)
        if status["finished_at"] and datetime.fromisoformat(status["finished_at"]) < finished_at:
            done_before += 1
    assert done_before <= 2
    assert batch_status(api, batch_id)["counts"]["succeeded"] < 50
    requests.delete(f"{api.url}/v1/batches/{batch_id}", headers=auth, timeout=30)
