"""One ``openai`` SDK call is never more than one task: the real SDK, with its default retries
(two, for 5xx, 409 and 429), against the real API and a worker, the simulator failing."""

from __future__ import annotations

import time

import openai
import pytest
import requests

from tests.integration.api.conftest import API_KEY

pytestmark = pytest.mark.timeout(90)
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def sdk(url: str) -> openai.OpenAI:
    """The SDK as a user builds it: default retries, default timeouts."""
    return openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY)


def tasks_in(redis_client) -> int:
    return sum(1 for _ in redis_client.scan_iter(match="genqueue:task:*", count=1000))


def test_a_failed_task_is_one_task_and_not_retried_by_the_sdk(
    redis_url, redis_client, simulator, start_worker, api_factory
) -> None:
    simulator.configure(fail_rate=1.0, fail_status=500)
    start_worker(redis_url, simulator.url, GENQUEUE_RETRY_MAX_ATTEMPTS=3)
    api = api_factory(redis_url, runpod_endpoint_url=simulator.url)
    with pytest.raises(openai.InternalServerError) as failed:
        sdk(api.url).completions.create(model="default", prompt="x", max_tokens=2)
    assert failed.value.status_code == 502
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert tasks_in(redis_client) == 1
    assert simulator.stats()["calls"] == 3  # the worker's three attempts, no more


def test_a_wait_that_runs_out_is_not_retried_into_a_second_generation(
    redis_url, redis_client, simulator, start_worker, api_factory
) -> None:
    simulator.configure(latency_s=1.5)
    start_worker(redis_url, simulator.url)
    api = api_factory(redis_url, runpod_endpoint_url=simulator.url, api_openai_wait_s=0.3)
    with pytest.raises(openai.APIStatusError) as timed_out:
        sdk(api.url).completions.create(model="default", prompt="x", max_tokens=2)
    assert timed_out.value.status_code == 504
    assert timed_out.value.response.headers["x-should-retry"] == "false"
    time.sleep(2.0)  # what a retried call would have started would be running by now
    assert tasks_in(redis_client) == 1
    assert simulator.stats()["calls"] == 1


def test_with_an_idempotency_key_the_sdk_retries_land_on_the_same_task(
    redis_url, redis_client, simulator, start_worker, api_factory
) -> None:
    simulator.configure(latency_s=1.0)
    start_worker(redis_url, simulator.url)
    api = api_factory(redis_url, runpod_endpoint_url=simulator.url, api_openai_wait_s=0.8)
    # The first wait runs out (504); the SDK retries it (about 0.5 s, then 1 s later), and each
    # retry waits for the same task, which answers one of them.
    started = time.monotonic()
    answer = sdk(api.url).completions.create(
        model="default", prompt="x", max_tokens=2, extra_headers={"Idempotency-Key": "call-1"}
    )
    assert time.monotonic() - started > 0.8  # one wait ran out at least: the SDK retried
    assert answer.choices[0].text != ""
    assert tasks_in(redis_client) == 1
    assert simulator.stats()["calls"] == 1
    again = requests.post(
        f"{api.url}/v1/completions", headers={**AUTH, "Idempotency-Key": "call-1"},
        json={"model": "default", "prompt": "x", "max_tokens": 2}, timeout=10,
    )  # fmt: skip
    assert again.status_code == 200 and again.json()["id"] == answer.id
    assert tasks_in(redis_client) == 1


def test_one_key_with_another_body_is_409_and_not_retried(
    redis_url, redis_client, simulator, start_worker, api_factory
) -> None:
    start_worker(redis_url, simulator.url)
    api = api_factory(redis_url, runpod_endpoint_url=simulator.url)
    client = sdk(api.url)
    key = {"Idempotency-Key": "call-2"}
    client.completions.create(model="default", prompt="x", max_tokens=2, extra_headers=key)
    started = time.monotonic()
    with pytest.raises(openai.ConflictError) as conflict:
        client.completions.create(model="default", prompt="y", max_tokens=2, extra_headers=key)
    assert time.monotonic() - started < 0.5  # answered at once: no retry slept first
    assert conflict.value.response.headers["x-should-retry"] == "false"
    assert tasks_in(redis_client) == 1
