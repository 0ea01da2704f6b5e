"""Secrets stay secret: canaries in every secret, searched for everywhere they could leak.

The RunPod key, the API key and the Redis password are random canaries. A worker at DEBUG and
the API run against a password-protected Redis; tasks succeed, fail, and are refused over HTTP.
Then every Redis key (DUMP and value), the worker log, Flower's pages and every API response
(body and headers) are searched for each canary.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from genqueue.embedded_redis import EmbeddedRedis, free_port
from tests.integration.security.helpers import redis_contents, run_flower

pytestmark = pytest.mark.timeout(120)


def _canary(kind: str) -> str:
    return f"canary{kind}{secrets.token_hex(8)}"


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(tmp_path / "redis", password=_canary("redispw")) as server:
        yield server


class Exchanges:
    """Every response the test received, as text to search."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        response = requests.request(method, url, timeout=30, **kwargs)
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        self.seen.append(f"{method} {url} -> {response.status_code}\n{headers}\n{response.text}")
        return response

    def text(self) -> str:
        return "\n".join(self.seen)


def _leaks(canaries: dict[str, str], where: str, text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [f"{name} in {where}" for name, value in canaries.items() if value.encode() in data]


def test_canaries_never_leak(
    password_redis: EmbeddedRedis,
    simulator,
    start_worker,
    api_factory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    canaries = {
        "RUNPOD_API_KEY": _canary("runpod"),
        "GENQUEUE_API_KEYS": _canary("apikey"),
        "redis password": str(password_redis.password),
    }
    redis_url = password_redis.url
    simulator.configure(api_key=canaries["RUNPOD_API_KEY"])
    worker = start_worker(
        redis_url,
        simulator.url,
        RUNPOD_API_KEY=canaries["RUNPOD_API_KEY"],
        GENQUEUE_API_KEYS=canaries["GENQUEUE_API_KEYS"],
        GENQUEUE_LOG_LEVEL="DEBUG",
        GENQUEUE_RETRY_MAX_ATTEMPTS=1,
    )
    api = api_factory(redis_url, api_keys=canaries["GENQUEUE_API_KEYS"])
    auth = {"Authorization": f"Bearer {canaries['GENQUEUE_API_KEYS']}"}
    http = Exchanges()
    body = {"prompt": "Tell me a secret.", "params": {"max_tokens": 6}}

    # Success, end to end through the password-protected broker and result store.
    accepted = http.call("POST", f"{api.url}/v1/tasks", json=body, headers=auth)
    assert accepted.status_code == 202
    task_url = f"{api.url}/v1/tasks/{accepted.json()['task_id']}?wait=30"
    done = http.call("GET", task_url, headers=auth)
    assert done.json()["status"] == "succeeded", done.text
    assert done.json()["result"]["usage"]["completion_tokens"] == 6

    # A permanent failure: the endpoint answers 400.
    simulator.script({"status": 400, "error": "context too long"})
    accepted = http.call("POST", f"{api.url}/v1/tasks", json=body, headers=auth)
    task_url = f"{api.url}/v1/tasks/{accepted.json()['task_id']}?wait=30"
    failed = http.call("GET", task_url, headers=auth)
    assert failed.json()["status"] == "failed", failed.text
    assert failed.json()["error"]["type"] == "endpoint_rejected"

    # Refusals: a wrong key (close to the real one), invalid input, an unknown id.
    wrong = {"Authorization": f"Bearer {canaries['GENQUEUE_API_KEYS'][:-1]}"}
    assert http.call("POST", f"{api.url}/v1/tasks", json=body, headers=wrong).status_code == 401
    assert http.call("GET", f"{api.url}/v1/tasks/x", headers=wrong).status_code == 401
    bad = {**body, "params": {"max_tokens": 0}, "surprise": True}
    assert http.call("POST", f"{api.url}/v1/tasks", json=bad, headers=auth).status_code == 422
    assert http.call("GET", f"{api.url}/v1/tasks/nope", headers=auth).status_code == 404
    assert http.call("GET", f"{api.url}/readyz").status_code == 200
    assert http.call("GET", f"{api.url}/openapi.json").status_code == 200

    # The RunPod key was really in use: the endpoint received it.
    assert f"Bearer {canaries['RUNPOD_API_KEY']}" in simulator.stats()["auth_headers"]

    # Flower (read-only, basic auth) on the same Redis, with the worker's events and conf.
    with run_flower(
        redis_url,
        tmp_path,
        FLOWER_BASIC_AUTH="admin:flower-pw",
        RUNPOD_API_KEY=canaries["RUNPOD_API_KEY"],
        GENQUEUE_API_KEYS=canaries["GENQUEUE_API_KEYS"],
    ) as flower:
        login = ("admin", "flower-pw")
        deadline = time.monotonic() + 20
        workers: dict[str, Any] = {}
        while not workers and time.monotonic() < deadline:
            workers = requests.get(
                f"{flower.url}/api/workers?refresh=1", auth=login, timeout=20
            ).json()
        assert workers, "Flower saw no worker"
        for path in ["/api/workers", "/api/tasks", "/workers", "/tasks", "/broker"]:
            assert http.call("GET", f"{flower.url}{path}", auth=login).status_code == 200
        for name in workers:
            http.call("GET", f"{flower.url}/worker/{name}", auth=login)
        flower_log = flower.log()

    client = redis.Redis.from_url(redis_url)
    contents = redis_contents(client)
    client.close()
    assert any(key.startswith(b"celery-task-meta-") for key in contents)
    assert any(key.startswith(b"genqueue:task:") for key in contents)

    log = worker.log()
    assert " DEBUG" in log or "DEBUG/" in log, "the worker did not log at DEBUG"
    leaks = _leaks(canaries, "the worker log", log)
    leaks += _leaks(canaries, "the Flower log", flower_log)
    leaks += _leaks(canaries, "API and Flower responses", http.text())
    leaks += _leaks(canaries, "the API's own log records", caplog.text)
    for key, data in contents.items():
        leaks += _leaks(canaries, f"Redis key {key!r}", data)
    assert leaks == []


def test_redis_errors_never_show_the_password(api_factory, tmp_path: Path) -> None:
    password = _canary("redispw")
    gone = f"redis://:{password}@127.0.0.1:{free_port()}/0"  # nothing listens there
    api = api_factory(gone)
    auth = {"Authorization": "Bearer test-key-1"}
    body = {"prompt": "hello"}
    answers = [
        requests.post(f"{api.url}/v1/tasks", json=body, headers=auth, timeout=30),
        requests.post(
            f"{api.url}/v1/tasks/batch", json={"requests": [body]}, headers=auth, timeout=30
        ),
        requests.get(f"{api.url}/v1/tasks/some-id", headers=auth, timeout=30),
        requests.get(f"{api.url}/readyz", timeout=30),
    ]
    assert [answer.status_code for answer in answers] == [503, 503, 503, 503]
    for answer in answers:
        assert password not in answer.text
        assert password not in str(dict(answer.headers))
        assert "unreachable" in answer.json()["detail"]


def test_wrong_redis_password_is_refused(password_redis: EmbeddedRedis) -> None:
    wrong = password_redis.url.replace(str(password_redis.password), "not-the-password")
    for url in (wrong, password_redis.url.replace(f":{password_redis.password}@", "")):
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        with pytest.raises(redis.AuthenticationError) as info:
            client.set("x", "1")
        assert str(password_redis.password) not in str(info.value)
        client.close()
    client = redis.Redis.from_url(password_redis.url)
    assert client.ping() is True
    client.close()
