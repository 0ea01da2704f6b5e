"""The pipeline end to end: a plain Celery client, a real worker process, the simulator."""

from __future__ import annotations

import time
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

pytestmark = pytest.mark.timeout(90)

REQUEST = {
    "prompt": "How can I make a cake?",
    "system": "You are Dolphin.",
    "params": {"max_tokens": 8, "seed": 10},
}


def send(client: Celery, request: Any = REQUEST, **options: Any) -> Any:
    return client.send_task("genqueue.generate", kwargs={"request": request}, **options)


def failure(result: Any, timeout_s: float = 30) -> BaseException:
    with pytest.raises(Exception) as info:
        result.get(timeout=timeout_s)
    assert not isinstance(info.value, CeleryTimeout), "the task did not finish"
    return info.value


def record(redis_client: Any, task_id: str) -> dict[str, str]:
    return {
        k.decode(): v.decode() for k, v in redis_client.hgetall(f"genqueue:task:{task_id}").items()
    }


def test_success_through_plain_celery(redis_url, simulator, start_worker, celery_client) -> None:
    start_worker(redis_url, simulator.url)
    result = send(celery_client)
    value = result.get(timeout=30)
    assert set(value) == {
        "text", "finish_reason", "model", "usage", "latency_ms", "endpoint", "endpoints_tried",
        "server_model",
    }  # fmt: skip
    assert value["endpoint"] == "default" and value["endpoints_tried"] == ["default"]
    assert value["model"] == value["server_model"] == "genqueue-simulated-model"
    assert value["usage"]["completion_tokens"] == 8
    assert value["finish_reason"] == "length"
    assert len(value["text"].split()) == 8
    # The rendered ChatML prompt reached the endpoint, with the params as they were.
    body = simulator.stats()["last_bodies"][-1]
    assert body["prompt"] == (
        "<|im_start|>system\nYou are Dolphin.<|im_end|>\n"
        "<|im_start|>user\nHow can I make a cake?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert body["max_tokens"] == 8 and body["seed"] == 10
    # The same text again for the same seed, read by id from another client.
    again = celery_client.AsyncResult(result.id).get(timeout=5)
    assert again == value


def test_two_500s_then_success(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    start_worker(redis_url, simulator.url)
    simulator.script({"status": 500, "error": "boom"}, {"status": 500, "error": "boom"}, "ok")
    result = send(celery_client)
    assert result.get(timeout=30)["usage"]["completion_tokens"] == 8
    assert simulator.stats()["calls"] == 3
    assert record(redis_client, result.id)["attempts"] == "3"


def test_429_retry_after_is_honoured(redis_url, simulator, start_worker, celery_client) -> None:
    start_worker(redis_url, simulator.url)
    simulator.script({"status": 429, "retry_after": "2"}, "ok")
    send(celery_client).get(timeout=30)
    first, second = simulator.stats()["call_times"][-2:]
    assert second - first >= 2.0
    assert simulator.stats()["calls"] == 2


def test_plain_text_500_keeps_the_endpoint_words(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    start_worker(redis_url, simulator.url, GENQUEUE_RETRY_MAX_ATTEMPTS=2)
    body = {"status": 500, "body": "No model is loaded", "content_type": "text/plain"}
    simulator.script(body, body)
    result = send(celery_client)
    error = failure(result)
    assert "No model is loaded" in str(error)
    assert simulator.stats()["calls"] == 2
    stored = record(redis_client, result.id)
    assert stored["attempts"] == "2"
    assert '"type": "retries_exhausted"' in stored["error"]
    assert "endpoint 'default' answered 500: No model is loaded" in stored["error"]


def test_400_fails_after_exactly_one_call(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    start_worker(redis_url, simulator.url)
    simulator.script({"status": 400, "error": "This model's maximum context length is 4096"})
    result = send(celery_client)
    error = failure(result)
    assert "maximum context length is 4096" in str(error)
    time.sleep(0.5)
    assert simulator.stats()["calls"] == 1
    assert '"type": "endpoint_rejected"' in record(redis_client, result.id)["error"]


def test_422_detail_is_kept(redis_url, simulator, start_worker, celery_client) -> None:
    start_worker(redis_url, simulator.url)
    simulator.script({"status": 422})
    error = failure(send(celery_client))
    assert "endpoint 'default' answered 422" in str(error) and "body" in str(error)
    assert simulator.stats()["calls"] == 1


def test_read_timeout_is_retried(redis_url, simulator, start_worker, celery_client) -> None:
    start_worker(redis_url, simulator.url, GENQUEUE_ENDPOINT_READ_TIMEOUT_S=1)
    simulator.script("hang", "ok")
    assert send(celery_client).get(timeout=30)["text"]
    assert simulator.stats()["calls"] == 2


def test_connection_reset_is_retried(redis_url, simulator, start_worker, celery_client) -> None:
    start_worker(redis_url, simulator.url)
    simulator.script("reset", {"status": 524}, "ok")
    assert send(celery_client).get(timeout=30)["text"]
    assert simulator.stats()["calls"] == 3


def test_non_json_200_fails_clearly(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    start_worker(redis_url, simulator.url)
    simulator.script("bad_json")
    result = send(celery_client)
    error = failure(result)
    assert "body is not JSON" in str(error)
    assert simulator.stats()["calls"] == 1
    assert '"type": "invalid_response"' in record(redis_client, result.id)["error"]


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        ((), {"request": "just a string"}, "must be a JSON object"),
        ((), {"request": {"prompt": "hi", "bogus": 1}}, "bogus: Extra inputs are not permitted"),
        (
            (),
            {"request": {"prompt": "hi", "messages": [{"role": "user", "content": "x"}]}},
            "exactly one",
        ),
        ((1, 2), {}, "takes one keyword argument 'request'"),
        ((), {"prompt": "hi"}, "takes one keyword argument 'request'"),
        ((), {"request": {"prompt": "hi", "template": "nope"}}, "unknown template 'nope'"),
        # A lone surrogate (JSON "\\udfff"): refused by the contract, not stored to break reads.
        (
            (),
            {"request": {"prompt": "hi", "metadata": {"note": ["\udfff"]}}},
            "metadata.note.0: not valid Unicode",
        ),
        ((), {"request": {"prompt": "\ud800"}}, "prompt: not valid Unicode"),
        (
            (),
            {"request": {"prompt": "hi", "params": {"stop": ["ok", "\udc80"]}}},
            "params.stop.1: not valid Unicode",
        ),
    ],
)
def test_malformed_payload_fails_once_and_worker_lives(
    redis_url, simulator, start_worker, celery_client, args, kwargs, expected
) -> None:
    worker = start_worker(redis_url, simulator.url)
    bad = celery_client.send_task("genqueue.generate", args=args, kwargs=kwargs)
    error = failure(bad)
    assert expected in str(error)
    # The worker still serves the next task, and the endpoint never saw the bad one.
    assert send(celery_client).get(timeout=30)["text"]
    assert simulator.stats()["calls"] == 1
    assert worker.process.poll() is None
    assert "Traceback" not in worker.log()


def test_api_key_reaches_endpoint_and_nowhere_else(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    canary = "sk-canary-7f3a9c2e1b"
    simulator.configure(api_key=canary)
    worker = start_worker(
        redis_url, simulator.url, RUNPOD_API_KEY=canary, GENQUEUE_LOG_LEVEL="DEBUG"
    )
    result = send(celery_client)
    assert result.get(timeout=30)["text"]
    assert simulator.stats()["auth_headers"][-1] == f"Bearer {canary}"
    # A refused key: the error message does not echo it either.
    simulator.configure(api_key="another-key")
    failure(send(celery_client))
    for key in redis_client.scan_iter(count=1000):
        dump = redis_client.dump(key) or b""
        assert canary.encode() not in dump, key
        assert canary.encode() not in key
    assert canary not in worker.log()


def test_many_in_flight_at_shipped_concurrency(
    redis_url, simulator, start_worker, celery_client
) -> None:
    """500 greenlets, 500 calls in flight: no pool exhaustion, every task stored."""
    simulator.configure(latency_s=2.0)
    start_worker(
        redis_url, simulator.url, GENQUEUE_WORKER_CONCURRENCY=500, RUNPOD_MAX_CONCURRENCY=500
    )
    results = [
        send(celery_client, {"prompt": f"n{i}", "params": {"max_tokens": 4}}) for i in range(600)
    ]
    values = [r.get(timeout=60) for r in results]
    assert all(v["usage"]["completion_tokens"] == 4 for v in values)
    assert simulator.stats()["max_in_flight"] >= 300
    assert simulator.stats()["calls"] == 600


def test_concurrency_cap_is_respected(redis_url, simulator, start_worker, celery_client) -> None:
    simulator.configure(latency_s=0.3)
    start_worker(redis_url, simulator.url, RUNPOD_MAX_CONCURRENCY=3)
    start_worker(redis_url, simulator.url, RUNPOD_MAX_CONCURRENCY=3)
    results = [send(celery_client, {"prompt": f"n{i}"}) for i in range(24)]
    for r in results:
        r.get(timeout=60)
    assert simulator.stats()["max_in_flight"] == 3
