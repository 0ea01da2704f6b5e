"""Prometheus metrics: a real worker's own port and the API's ``/metrics``, scraped for real."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from genqueue.cli.status_view import read_view, render
from genqueue.embedded_redis import free_port
from tests.integration.api.conftest import API_KEY, queued_messages
from tests.integration.observability.conftest import scrape, scrape_until, value, wait_for
from worker import keys, lua
from worker.settings import Settings

pytestmark = pytest.mark.timeout(90)

AUTH = {"Authorization": f"Bearer {API_KEY}"}
REQUEST = {"prompt": "metrics", "params": {"max_tokens": 4}}


def _send(celery_client, request=REQUEST, **options):
    return celery_client.send_task("genqueue.generate", kwargs={"request": request}, **options)


def test_worker_counters_move(redis_url, redis_client, simulator, start_worker, celery_client):
    port = free_port()
    start_worker(redis_url, simulator.url, GENQUEUE_WORKER_METRICS_PORT=port)
    url = f"http://127.0.0.1:{port}/metrics"
    before = scrape(url)
    assert value(before, "genqueue_worker_tasks_succeeded_total") == 0
    assert value(before, "genqueue_worker_tasks_in_flight") == 0

    # Two successes, one of them after a retried 503; one refusal (400).
    simulator.script({"status": 503, "retry_after": "0"})
    assert _send(celery_client).get(timeout=30)["text"]
    assert _send(celery_client).get(timeout=30)["text"]
    simulator.script({"status": 400})
    with pytest.raises(Exception, match="400"):
        _send(celery_client).get(timeout=30)
    # An expired task (never sent to the endpoint) and one cancelled before it ran.
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    with pytest.raises(Exception, match="deadline"):
        _send(celery_client, {**REQUEST, "deadline": past}).get(timeout=30)
    redis_client.hset(keys.task_record("cancel-me"), "cancel_requested", "1")
    _send(celery_client, task_id="cancel-me")
    wait_for(lambda: redis_client.exists(keys.celery_result("cancel-me")), 30, "the cancellation")

    after = scrape_until(
        url, lambda s: value(s, "genqueue_worker_tasks_cancelled_total") == 1, 10, "a cancellation"
    )
    assert value(after, "genqueue_worker_tasks_succeeded_total") == 2
    assert value(after, "genqueue_worker_tasks_failed_total", error_type="endpoint_rejected") == 1
    assert value(after, "genqueue_worker_tasks_failed_total", error_type="expired") == 1
    assert value(after, "genqueue_worker_tasks_expired_total") == 1
    assert value(after, "genqueue_worker_tasks_cancelled_total") == 1
    assert value(after, "genqueue_worker_tasks_retried_total", reason="endpoint_unavailable") == 1
    # Four endpoint calls: the 503, its retry, the other success, the 400.
    assert value(after, "genqueue_worker_endpoint_latency_seconds_count") == 4
    assert simulator.stats()["calls"] == 4
    assert value(after, "genqueue_worker_task_latency_seconds_count", outcome="succeeded") == 2
    assert value(after, "genqueue_worker_task_latency_seconds_count", outcome="failed") == 2
    assert value(after, "genqueue_worker_completion_tokens_total") == 8
    assert value(after, "genqueue_worker_prompt_tokens_total") > 0
    assert value(after, "genqueue_worker_tasks_in_flight") == 0


def test_api_metrics_show_the_shared_state(
    api_factory, redis_url, redis_client, simulator, start_worker
):
    api = api_factory(redis_url, runpod_endpoint_url=simulator.url, runpod_max_concurrency=7)
    url = f"{api.url}/metrics"
    endpoint = "default"  # RUNPOD_ENDPOINT_URL alone defines the endpoint "default"
    labels = {"endpoint": endpoint}
    first = scrape(url)  # no key needed
    assert value(first, "genqueue_redis_up") == 1
    assert value(first, "genqueue_api_tasks_submitted_total") == 0
    assert value(first, "genqueue_queue_depth") == 0
    assert value(first, "genqueue_endpoint_max_concurrency", **labels) == 7
    assert value(first, "genqueue_breaker_state", state="closed", **labels) == 1

    # No worker yet: what is submitted waits in the queues, at every priority.
    for priority in (0, 5, 9):
        body = {**REQUEST, "priority": priority}
        assert requests.post(f"{api.url}/v1/tasks", json=body, headers=AUTH, timeout=10).ok
    batch = {"requests": [REQUEST, REQUEST]}
    assert requests.post(f"{api.url}/v1/tasks/batch", json=batch, headers=AUTH, timeout=10).ok
    # A replayed idempotent submission enqueues nothing and is not counted again.
    for _ in range(2):
        headers = {**AUTH, "Idempotency-Key": "same"}
        assert requests.post(f"{api.url}/v1/tasks", json=REQUEST, headers=headers, timeout=10).ok
    assert queued_messages(redis_client) == 6
    now_ms = int(time.time() * 1000)
    redis_client.zadd(keys.lease(endpoint), {"live-call": now_ms + 60_000, "dead-call": 1})
    breaker = {"open_until": now_ms + 60_000, "failures": 5}
    redis_client.hset(keys.breaker(endpoint), mapping=breaker)
    redis_client.lpush(keys.dead_letters(), json.dumps({"task_id": "x"}))

    queued = scrape(url)
    assert value(queued, "genqueue_api_tasks_submitted_total") == 6
    assert value(queued, "genqueue_queue_depth") == 6
    assert value(queued, "genqueue_endpoint_in_flight", **labels) == 1
    assert value(queued, "genqueue_breaker_state", state="open", **labels) == 1
    assert value(queued, "genqueue_breaker_state", state="closed", **labels) == 0
    assert value(queued, "genqueue_breaker_consecutive_failures", **labels) == 5
    assert value(queued, "genqueue_dead_letters") == 1
    # Sorted into the backlog by tenant (as a worker whose window is full does): still queued.
    sort = lua.register(redis_client, "worker.delivery", "backlog_sort")
    lists = keys.queue_lists(keys.GENERAL_QUEUES)
    assert sort(keys=[keys.unreadable(), *lists], args=[100, 10, "internal", ""])[:2] == [6, 0]
    assert value(scrape(url), "genqueue_queue_depth") == 6

    # The breaker closes and a worker drains the queues.
    redis_client.delete(keys.breaker(endpoint), keys.lease(endpoint))
    start_worker(redis_url, simulator.url)
    drained = scrape_until(
        url,
        lambda s: (
            value(s, "genqueue_queue_depth") == 0
            and value(s, "genqueue_endpoint_in_flight", **labels) == 0
        ),
        30,
        "the queues to drain and the calls to end",
    )
    assert value(drained, "genqueue_api_tasks_submitted_total") == 6
    assert value(drained, "genqueue_breaker_state", state="closed", **labels) == 1


def test_api_metrics_without_redis_still_answer(api_factory):
    api = api_factory(f"redis://127.0.0.1:{free_port()}/0")
    samples = scrape(f"{api.url}/metrics")
    assert value(samples, "genqueue_redis_up") == 0
    assert ("genqueue_queue_depth", frozenset()) not in samples


def test_api_metrics_and_status_show_every_endpoint(api_factory, redis_url, redis_client, tmp_path):
    endpoints = tmp_path / "endpoints.toml"
    endpoints.write_text(
        'default = "pod"\n'
        '[endpoints.pod]\nurl = "http://127.0.0.1:9/pod"\nmax_concurrency = 2\n'
        '[endpoints.vllm]\nkind = "openai"\nurl = "http://127.0.0.1:9/v1"\nmax_concurrency = 8\n'
    )
    now_ms = int(time.time() * 1000)
    redis_client.zadd(keys.lease("vllm"), {"a": now_ms + 60_000, "b": now_ms + 60_000})
    redis_client.hset(keys.breaker("vllm"), mapping={"open_until": now_ms + 60_000, "failures": 5})
    redis_client.lpush("genqueue.vllm", "message")  # a task waiting in vllm's own queue
    redis_client.lpush(keys.unreadable(), "not json", "[]")  # set aside by a worker
    api = api_factory(redis_url, endpoints_file=endpoints)

    scraped = scrape(f"{api.url}/metrics")
    assert value(scraped, "genqueue_queue_depth") == 1
    assert value(scraped, "genqueue_endpoint_max_concurrency", endpoint="pod") == 2
    assert value(scraped, "genqueue_endpoint_max_concurrency", endpoint="vllm") == 8
    assert value(scraped, "genqueue_endpoint_in_flight", endpoint="pod") == 0
    assert value(scraped, "genqueue_endpoint_in_flight", endpoint="vllm") == 2
    assert value(scraped, "genqueue_breaker_state", endpoint="pod", state="closed") == 1
    assert value(scraped, "genqueue_breaker_state", endpoint="vllm", state="open") == 1
    assert value(scraped, "genqueue_breaker_consecutive_failures", endpoint="vllm") == 5
    assert value(scraped, "genqueue_unreadable_messages") == 2

    text = render(read_view(redis_client, Settings(redis_url=redis_url, endpoints_file=endpoints)))
    labelled = ("in flight", "breaker")
    lines = [line[17:] for line in text.splitlines() if line.startswith(labelled)]
    assert lines[0] == "0 / 2  (endpoint pod)"
    assert lines[1] == "closed"
    assert lines[2] == "2 / 8  (endpoint vllm)"
    assert lines[3].startswith("open (probe in ") and lines[3].endswith(", 5 consecutive failures")
    assert "unreadable       2 (set aside in genqueue:unreadable)" in text.splitlines()


def test_api_metrics_and_status_show_each_pool_replica(
    api_factory, redis_url, redis_client, tmp_path
):
    endpoints = tmp_path / "endpoints.toml"
    endpoints.write_text(
        '[endpoints.pool]\nkind = "vllm"\nmax_concurrency = 2\n'
        'urls = ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]\n'
    )
    now_ms = int(time.time() * 1000)
    live = now_ms + 60_000
    redis_client.zadd(keys.lease("pool"), {"a": live, "b": live, "c": live})
    # "gone" ended (no lease): its assignment does not count.
    redis_client.hset(keys.pool_assign("pool"), mapping={"a": 0, "b": 1, "c": 1, "gone": 0})
    redis_client.hset(keys.breaker(keys.replica_id("pool", 0)), "open_until", live)
    api = api_factory(redis_url, endpoints_file=endpoints)

    scraped = scrape(f"{api.url}/metrics")
    assert value(scraped, "genqueue_endpoint_in_flight", endpoint="pool") == 3
    assert value(scraped, "genqueue_endpoint_max_concurrency", endpoint="pool") == 4
    assert value(scraped, "genqueue_replica_in_flight", endpoint="pool", replica="0") == 1
    assert value(scraped, "genqueue_replica_in_flight", endpoint="pool", replica="1") == 2
    open_0 = {"endpoint": "pool", "replica": "0", "state": "open"}
    assert value(scraped, "genqueue_replica_breaker_state", **open_0) == 1
    closed_1 = {"endpoint": "pool", "replica": "1", "state": "closed"}
    assert value(scraped, "genqueue_replica_breaker_state", **closed_1) == 1
    # The pool's own breaker is closed while one replica is.
    assert value(scraped, "genqueue_breaker_state", endpoint="pool", state="closed") == 1

    text = render(read_view(redis_client, Settings(redis_url=redis_url, endpoints_file=endpoints)))
    lines = text.splitlines()
    at = lines.index("in flight        3 / 4  (endpoint pool)")
    assert lines[at + 1] == "breaker          closed"
    assert lines[at + 2].startswith("  replica 0      1 / 2, breaker open (probe in ")
    assert lines[at + 3] == "  replica 1      2 / 2, breaker closed"
