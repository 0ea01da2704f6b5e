"""Webhooks: signed, refused for private addresses before any connection, retried, given up.

Network traffic only ever goes to loopback: private and link-local addresses are literals judged
without a connection, and receivers are servers on 127.0.0.1 that the operator allowlists.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
import requests

from tests.integration.observability.conftest import API_KEY, queued_messages, wait_for
from worker.webhooks.sender import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookRefused,
    check_webhook_url,
    sign,
    verify_webhook,
)

pytestmark = pytest.mark.timeout(90)

SECRET = "whsec-test-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
REQUEST = {"prompt": "hook", "params": {"max_tokens": 3}}


# --------------------------------------------------------------------------- signatures


def test_signature_round_trip_and_tampering() -> None:
    body = b'{"task_id": "t", "status": "succeeded"}'
    now = int(time.time())
    signature = sign(SECRET, body, now)
    expected = hmac.new(SECRET.encode(), f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    assert signature == f"v1={expected}"
    assert verify_webhook(SECRET, body, str(now), signature)
    assert verify_webhook(SECRET, body.decode(), str(now), f"v1=old, {signature}")
    assert not verify_webhook(SECRET, body.replace(b"succeeded", b"failed"), str(now), signature)
    assert not verify_webhook("another-secret", body, str(now), signature)
    assert not verify_webhook(SECRET, body, str(now + 1), signature)  # timestamp is signed
    stale = now - 301
    assert not verify_webhook(SECRET, body, str(stale), sign(SECRET, body, stale))
    assert verify_webhook(SECRET, body, str(stale), sign(SECRET, body, stale), tolerance_s=400)
    for timestamp, header in [(None, signature), (str(now), None), ("soon", signature)]:
        assert not verify_webhook(SECRET, body, timestamp, header)
    assert not verify_webhook(SECRET, body, str(now), expected)  # the version prefix is required


# --------------------------------------------------------------------------- addresses


def _no_lookup(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} should have been judged without a lookup")


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:8000/v1/tasks",
        "http://192.168.1.1/",
        "http://172.16.0.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://[::ffff:10.0.0.5]/",
        "http://224.0.0.1/",
    ],
)
def test_private_literals_are_refused_without_a_lookup(url: str) -> None:
    def literal_only(host: str, port: int) -> list[str]:
        return [host]  # what getaddrinfo answers for a literal, with no network

    with pytest.raises(WebhookRefused, match="private"):
        check_webhook_url(url, (), resolve=literal_only)


def test_a_name_that_resolves_to_a_private_address_is_refused() -> None:
    def rebinding(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.1.2.3"]

    with pytest.raises(WebhookRefused, match="private"):
        check_webhook_url("https://hooks.example.com/in", (), resolve=rebinding)
    check_webhook_url("https://hooks.example.com/in", (), resolve=lambda h, p: ["93.184.216.34"])


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:9000/hook", True),
        ("http://hooks.internal/anything", True),
        ("https://HOOKS.internal./x", True),
        ("https://svc.example.com/in", True),
        ("https://svc.example.com/in/deep?x=1", True),
        ("https://svc.example.com/inbox", False),
        ("http://svc.example.com/in", False),  # another scheme
        ("https://svc.example.com:8443/in", False),  # another port
        ("https://svc.example.com.evil.net/in", False),
        ("http://10.0.0.5/hook", False),
        ("http://169.254.169.254/", False),
    ],
)
def test_allowlist_entries_are_hosts_or_url_prefixes(url: str, allowed: bool) -> None:
    allowlist = ("127.0.0.1", "hooks.internal", "https://svc.example.com/in")
    if allowed:
        check_webhook_url(url, allowlist, resolve=_no_lookup)
    else:
        with pytest.raises(WebhookRefused, match="ALLOWLIST"):
            check_webhook_url(url, allowlist, resolve=_no_lookup)


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "http:///x"])
def test_only_http_urls(url: str) -> None:
    with pytest.raises(WebhookRefused):
        check_webhook_url(url, (), resolve=_no_lookup)


# --------------------------------------------------------------------------- the API


@pytest.mark.parametrize(
    ("url", "fields"),
    [
        ("http://10.0.0.5/hook", {}),
        ("http://169.254.169.254/latest/meta-data/", {}),
        ("http://[::ffff:169.254.169.254]/", {}),
        ("http://127.0.0.1:6379/", {}),
        ("http://127.0.0.1:6379\\@8.8.8.8/", {}),  # urllib3 would connect to 127.0.0.1:6379
        (
            "http://169.254.169.254\\@hooks.example.com/x",
            {"webhook_allowlist": "hooks.example.com"},
        ),
        ("http://[64:ff9b::a9fe:a9fe]/", {}),  # NAT64 of 169.254.169.254
        ("http://[2002:a9fe:a9fe::1]/", {}),  # 6to4 of 169.254.169.254
        ("http://10.0.0.5/hook", {"webhook_allowlist": "hooks.example.com"}),
        ("https://elsewhere.example.com/", {"webhook_allowlist": "hooks.example.com"}),
        ("http://10.0.0.5/hook", {"webhook_secret": None}),  # webhooks off
        ("gopher://10.0.0.5/", {}),
    ],
)
def test_refused_at_submission(api_factory, redis_url, redis_client, url, fields) -> None:
    settings = {"webhook_secret": SECRET, **fields}
    api = api_factory(redis_url, **settings)
    body = {**REQUEST, "webhook_url": url}
    response = requests.post(f"{api.url}/v1/tasks", json=body, headers=AUTH, timeout=10)
    assert response.status_code == 422, response.text
    assert "webhook_url" in response.text
    batch = {"requests": [REQUEST, body]}
    response = requests.post(f"{api.url}/v1/tasks/batch", json=batch, headers=AUTH, timeout=10)
    assert response.status_code == 422, response.text
    assert queued_messages(redis_client) == 0
    assert list(redis_client.scan_iter()) == []  # nothing stored, nothing enqueued


# --------------------------------------------------------------------------- delivery


def _wait_status(api, task_id: str) -> dict:
    url = f"{api.url}/v1/tasks/{task_id}?wait=30"
    return dict(requests.get(url, headers=AUTH, timeout=40).json())


def test_webhooks_are_signed_and_carry_the_status(
    api_factory, redis_url, simulator, start_worker, receiver
) -> None:
    env = {"GENQUEUE_WEBHOOK_SECRET": SECRET, "GENQUEUE_WEBHOOK_ALLOWLIST": "127.0.0.1"}
    start_worker(redis_url, simulator.url, **env)
    api = api_factory(redis_url, webhook_secret=SECRET, webhook_allowlist="127.0.0.1")
    hook = f"{receiver.url}/hooks/genqueue?token=abc"
    ok = {**REQUEST, "webhook_url": hook, "metadata": {"order": 7}}
    task_id = requests.post(f"{api.url}/v1/tasks", json=ok, headers=AUTH, timeout=10).json()[
        "task_id"
    ]
    status = _wait_status(api, task_id)
    assert status["status"] == "succeeded"
    delivered = wait_for(lambda: receiver.received, 20, "the webhook")[0]

    assert delivered.path == "/hooks/genqueue?token=abc"
    headers = {k.lower(): v for k, v in delivered.headers.items()}
    assert headers["content-type"] == "application/json"
    timestamp, signature = headers[TIMESTAMP_HEADER.lower()], headers[SIGNATURE_HEADER.lower()]
    assert abs(int(timestamp) - time.time()) < 30
    assert verify_webhook(SECRET, delivered.body, timestamp, signature)
    assert json.loads(delivered.body) == status  # the shape of GET /v1/tasks/{id}
    tampered = delivered.body.replace(b'"order":7', b'"order":8')
    assert tampered != delivered.body
    assert not verify_webhook(SECRET, tampered, timestamp, signature)

    # A failed task is announced too.
    simulator.script({"status": 400})
    failing = {**REQUEST, "webhook_url": hook}
    failed_id = requests.post(f"{api.url}/v1/tasks", json=failing, headers=AUTH, timeout=10)
    failed_id = failed_id.json()["task_id"]
    assert _wait_status(api, failed_id)["status"] == "failed"
    wait_for(lambda: len(receiver.received) == 2, 20, "the second webhook")
    announced = json.loads(receiver.received[1].body)
    assert announced["task_id"] == failed_id
    assert announced["error"]["type"] == "endpoint_rejected"
    time.sleep(0.5)
    assert len(receiver.received) == 2  # delivered once each


def test_a_receiver_that_is_down_is_retried_then_given_up(
    api_factory, redis_url, simulator, start_worker, receiver, celery_client
) -> None:
    receiver.status = 503
    worker = start_worker(
        redis_url,
        simulator.url,
        GENQUEUE_WEBHOOK_SECRET=SECRET,
        GENQUEUE_WEBHOOK_ALLOWLIST=receiver.url,
        GENQUEUE_WEBHOOK_RETRY_FOR_S="2",
        GENQUEUE_WEBHOOK_RETRY_MAX_DELAY_S="0.3",
    )
    api = api_factory(redis_url, webhook_secret=SECRET, webhook_allowlist=receiver.url)
    body = {**REQUEST, "webhook_url": f"{receiver.url}/down"}
    task_id = requests.post(f"{api.url}/v1/tasks", json=body, headers=AUTH, timeout=10).json()[
        "task_id"
    ]
    assert _wait_status(api, task_id)["status"] == "succeeded"
    wait_for(lambda: f"webhook of task {task_id} given up" in worker.log(), 20, "giving up")
    assert len(receiver.received) >= 3
    assert _wait_status(api, task_id)["status"] == "succeeded"  # never affected
    assert all(r.path == "/down" for r in receiver.received)

    # A producer that bypasses the API cannot aim the worker elsewhere: refused, never sent.
    sneaky = {**REQUEST, "webhook_url": "http://169.254.169.254/latest/meta-data/"}
    result = celery_client.send_task("genqueue.generate", kwargs={"request": sneaky})
    assert result.get(timeout=30)["text"]
    wait_for(lambda: f"webhook of task {result.id} not sent" in worker.log(), 20, "a refusal")
    assert "169.254.169.254" not in worker.log()  # nor its address in a log line


def test_a_url_read_two_ways_does_not_reach_the_worker_s_loopback(
    redis_url, simulator, start_worker, receiver, celery_client
) -> None:
    # Python's urlsplit reads the host after the backslash (allowlisted); urllib3 connects to
    # what comes before it.
    worker = start_worker(
        redis_url,
        simulator.url,
        GENQUEUE_WEBHOOK_SECRET=SECRET,
        GENQUEUE_WEBHOOK_ALLOWLIST="hooks.example.com",
    )
    port = receiver.url.rsplit(":", 1)[1]
    sneaky = {**REQUEST, "webhook_url": f"http://127.0.0.1:{port}\\@hooks.example.com/x"}
    result = celery_client.send_task("genqueue.generate", kwargs={"request": sneaky})
    wait_for(lambda: f"webhook of task {result.id} not sent" in worker.log(), 30, "a refusal")
    assert receiver.received == []
    assert "delivered" not in worker.log()
