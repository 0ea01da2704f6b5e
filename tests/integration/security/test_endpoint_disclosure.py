"""What a caller may read about an endpoint: its name and the class of a failure, nothing else.

The endpoint's host, port and path, its key, and the words of a page a proxy answered with stay
in the worker log (host, port, path) or nowhere (key, page): task records, Celery's results (their
tracebacks too), the completion stream and the dead letters are searched for them.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery import Celery

from genqueue.embedded_redis import free_port
from tests.integration.security.helpers import redis_contents, wait_error

pytestmark = pytest.mark.timeout(90)

PATH = "/pod-7f3a9c2e1b/v1"


def _send(client: Celery, **request: Any) -> Any:
    body = {"prompt": "hello", "params": {"max_tokens": 4}, **request}
    return client.send_task("genqueue.generate", kwargs={"request": body})


def _wait_error(client: redis.Redis, task_id: str) -> dict[str, Any]:
    return wait_error(client, task_id, timeout_s=30)


def _everything(client: redis.Redis) -> bytes:
    return b"\n".join(key + b"=" + value for key, value in redis_contents(client).items())


def test_a_refused_connection_names_the_endpoint_only(
    redis_url, redis_client, start_worker, celery_client
) -> None:
    port = free_port()  # nothing listens there
    worker = start_worker(
        redis_url,
        f"http://127.0.0.1:{port}{PATH}",
        GENQUEUE_RETRY_MAX_ATTEMPTS=2,
        GENQUEUE_LOG_LEVEL="DEBUG",
    )
    result = _send(celery_client)
    error = _wait_error(redis_client, result.id)
    assert error["type"] == "retries_exhausted"
    assert error["message"] == ("gave up after 2 attempts: endpoint 'default': connection refused")
    stored = _everything(redis_client)
    assert b"connection refused" in stored
    for private in (str(port), "127.0.0.1", "pod-7f3a9c2e1b", "HTTPConnectionPool", "/v1/"):
        assert private.encode() not in stored, private
    # The operator still learns where: the worker log names host, port and path.
    log = worker.log()
    assert f"port={port}" in log and "pod-7f3a9c2e1b" in log


def test_a_read_timeout_says_how_long(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    start_worker(
        redis_url,
        simulator.url,
        GENQUEUE_RETRY_MAX_ATTEMPTS=1,
        GENQUEUE_ENDPOINT_READ_TIMEOUT_S=1,
    )
    simulator.script("hang")
    result = _send(celery_client)
    error = _wait_error(redis_client, result.id)
    assert (
        error["message"] == "gave up after 1 attempts: endpoint 'default': read timed out after 1 s"
    )
    stored = _everything(redis_client)
    assert simulator.url.split("//")[1].encode() not in stored
    assert b"HTTPConnectionPool" not in stored and b"ReadTimeout" not in stored


def test_a_proxy_page_is_not_passed_on(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    start_worker(redis_url, simulator.url, GENQUEUE_RETRY_MAX_ATTEMPTS=1)
    host = simulator.url.split("//")[1]
    page = f"<html><title>{host} | 502: Bad gateway</title>Your IP: 203.0.113.7</html>"
    simulator.script({"status": 502, "body": page, "content_type": "text/html"})
    error = _wait_error(redis_client, _send(celery_client).id)
    assert error["message"] == (
        "gave up after 1 attempts: endpoint 'default' answered 502 (an HTML page, not kept)"
    )
    stored = _everything(redis_client)
    assert b"203.0.113.7" not in stored and host.encode() not in stored


def test_the_endpoints_words_are_kept_without_its_address_or_key(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    key = "sk-canary-0d9e8f7a6b"
    simulator.configure(api_key=key)
    start_worker(redis_url, simulator.url, RUNPOD_API_KEY=key)
    host = simulator.url.split("//")[1]
    words = f"model not found at {simulator.url}/v1/completions (key {key})"
    simulator.script({"status": 404, "error": words})
    error = _wait_error(redis_client, _send(celery_client).id)
    assert error["type"] == "endpoint_rejected"
    assert error["message"] == (
        "endpoint 'default' answered 404 for POST /v1/completions: model not found at "
        "http://[endpoint]/v1/completions (key [redacted])"
    )
    stored = _everything(redis_client)
    assert host.encode() not in stored and key.encode() not in stored


def test_a_200_that_is_not_a_completion_is_not_echoed(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    start_worker(redis_url, simulator.url)
    body = {"status": 200, "body": {"echo": "the prompt of someone else"}}
    simulator.script(body)
    error = _wait_error(redis_client, _send(celery_client).id)
    assert error == {
        "type": "invalid_response",
        "message": "endpoint 'default' answered 200 but the body is not a completion",
    }
    assert b"someone else" not in _everything(redis_client)
