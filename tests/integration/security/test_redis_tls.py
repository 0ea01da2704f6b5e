"""``rediss://``: every Redis client genqueue makes speaks TLS and verifies the server against
``GENQUEUE_REDIS_CA_FILE``; a server whose certificate that CA did not sign is refused.

Redis here is the suite's plain one behind a TLS-terminating proxy
(tests/integration/security/tls_proxy.py) whose certificates a CA made by the test signs. The
proxy asks for a client certificate too (``GENQUEUE_REDIS_CERT_FILE`` and
``GENQUEUE_REDIS_KEY_FILE``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from api_producer.producers.direct import DirectProducer, describe_redis_error, producer_celery
from tests.conftest import worker_env
from tests.integration.security.tls_proxy import Authority, Issued, TlsProxy, server_context
from tests.redis_clients import ping_async
from worker.celery_app import GenQueueCelery, celery_config
from worker.contract import GenerationRequest
from worker.redis_io import connections
from worker.settings import Settings
from worker.tenancy.tenants import key_tenant

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class TlsRedis:
    url: str
    env: dict[str, str]
    proxy: TlsProxy

    def settings(self, **fields: Any) -> Settings:
        return Settings(
            redis_url=self.url,
            redis_ca_file=self.env["GENQUEUE_REDIS_CA_FILE"],
            redis_cert_file=self.env.get("GENQUEUE_REDIS_CERT_FILE"),
            redis_key_file=self.env.get("GENQUEUE_REDIS_KEY_FILE"),
            **fields,
        )


def _tls_url(plain_url: str, port: int) -> str:
    parts = urlsplit(plain_url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return f"rediss://{auth}127.0.0.1:{port}{parts.path}"


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority(tmp_path, "genqueue-test-ca")


def _serve(redis_url: str, server: Issued, client_ca: Path | None) -> tuple[TlsProxy, str]:
    plain = urlsplit(redis_url)
    proxy = TlsProxy(server_context(server, client_ca), plain.hostname or "", plain.port or 6379)
    proxy.start()
    return proxy, _tls_url(redis_url, proxy.port)


@pytest.fixture
def tls_redis(redis_url: str, authority: Authority) -> Iterator[TlsRedis]:
    """The test's Redis database over TLS, with a client certificate asked for."""
    client = authority.issue("client", server=False)
    proxy, url = _serve(redis_url, authority.issue("server", server=True), authority.ca.cert_file)
    env = {
        "GENQUEUE_REDIS_CA_FILE": str(authority.ca.cert_file),
        "GENQUEUE_REDIS_CERT_FILE": str(client.cert_file),
        "GENQUEUE_REDIS_KEY_FILE": str(client.key_file),
    }
    yield TlsRedis(url, env, proxy)
    proxy.stop()


@pytest.fixture(params=["another CA", "another host"])
def impostor(
    request: pytest.FixtureRequest, redis_url: str, authority: Authority, tmp_path: Path
) -> Iterator[TlsRedis]:
    """A Redis over TLS whose certificate another CA signed, or the trusted CA signed for
    another host; the client trusts ``authority``."""
    if request.param == "another CA":
        (tmp_path / "other").mkdir()
        other = Authority(tmp_path / "other", "someone-else")
        certificate = other.issue("impostor", server=True)
    else:
        certificate = authority.issue("elsewhere", server=True, host="192.0.2.1")
    proxy, url = _serve(redis_url, certificate, None)
    yield TlsRedis(url, {"GENQUEUE_REDIS_CA_FILE": str(authority.ca.cert_file)}, proxy)
    proxy.stop()


def _wait(api_url: str, task_id: str, key: str) -> dict[str, Any]:
    answer = requests.get(
        f"{api_url}/v1/tasks/{task_id}?wait=30",
        headers={"Authorization": f"Bearer {key}"},
        timeout=40,
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_worker_api_producer_and_status_over_tls(
    tls_redis: TlsRedis,
    simulator: Any,
    start_worker: Callable[..., Any],
    api_factory: Callable[..., Any],
    auth: dict[str, str],
    tmp_path: Path,
) -> None:
    start_worker(tls_redis.url, simulator.url, **tls_redis.env)
    api = api_factory(
        tls_redis.url,
        redis_ca_file=tls_redis.env["GENQUEUE_REDIS_CA_FILE"],
        redis_cert_file=tls_redis.env["GENQUEUE_REDIS_CERT_FILE"],
        redis_key_file=tls_redis.env["GENQUEUE_REDIS_KEY_FILE"],
    )
    key = auth["Authorization"].removeprefix("Bearer ")

    # Over HTTP: the API's producer, store and pub/sub wait; the worker's broker and backend.
    sent = requests.post(
        f"{api.url}/v1/tasks", json={"prompt": "hi", "params": {"max_tokens": 4}}, headers=auth,
        timeout=10,
    )  # fmt: skip
    assert sent.status_code == 202, sent.text
    done = _wait(api.url, sent.json()["task_id"], key)
    assert done["status"] == "succeeded", done
    assert done["result"]["usage"]["completion_tokens"] == 4

    # The direct producer, with its own clients.
    producer = DirectProducer(tls_redis.settings())
    try:
        # For the key's tenant: a producer's task is read over HTTP by the tenant it names.
        request = GenerationRequest(
            prompt="direct", params={"max_tokens": 3}, tenant=key_tenant(key)
        )
        task_id = producer.submit(request)
    finally:
        producer.close()
    assert _wait(api.url, task_id, key)["result"]["usage"]["completion_tokens"] == 3

    # The API's metrics read Redis too.
    metrics = requests.get(f"{api.url}/metrics", headers=auth, timeout=10)
    assert metrics.status_code == 200 and "genqueue_" in metrics.text

    # genqueue status, in a process of its own, from the environment.
    env = {**worker_env(tls_redis.url, simulator.url), **tls_redis.env}
    shown = subprocess.run(
        [sys.executable, "-m", "genqueue", "status", "--once"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert tls_redis.proxy.handshakes > 0


def _verify_failed(call: Callable[[], Any]) -> str:
    with pytest.raises(Exception) as caught:
        call()
    text = describe_redis_error(caught.value)
    assert "certificate" in text, f"{caught.value!r} described as {text!r}"
    return text


def test_a_server_the_ca_did_not_sign_is_refused(impostor: TlsRedis, tmp_path: Path) -> None:
    settings = impostor.settings()
    sync = connections.sync_client(settings)
    text = _verify_failed(sync.ping)
    assert "GENQUEUE_REDIS_CA_FILE" in text
    sync.close()

    _verify_failed(lambda: ping_async(settings))

    app = GenQueueCelery("tls-test", set_as_current=False)
    app.genqueue_settings = settings
    app.conf.update(celery_config(settings))
    _verify_failed(app.backend.client.ping)
    with app.connection_for_write() as broker:
        _verify_failed(lambda: broker.ensure_connection(max_retries=1, timeout=2))
    sender = producer_celery(settings)
    with sender.connection_for_write() as broker:
        _verify_failed(lambda: broker.ensure_connection(max_retries=1, timeout=2))
    assert impostor.proxy.handshakes == 0

    # genqueue status says why, without the URL.
    env = {**os.environ, "REDIS_URL": impostor.url, **impostor.env}
    shown = subprocess.run(
        [sys.executable, "-m", "genqueue", "status", "--once"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert shown.returncode == 1
    assert "certificate" in shown.stderr and "GENQUEUE_REDIS_CA_FILE" in shown.stderr
    assert impostor.url not in shown.stderr


def test_the_worker_refuses_a_server_the_ca_did_not_sign(
    impostor: TlsRedis, simulator: Any, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "genqueue", "worker"],
            env={**worker_env(impostor.url, simulator.url), **impostor.env},
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "certificate verify failed" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        assert " ready." not in log.read_text(errors="replace")
    finally:
        os.killpg(process.pid, 9)
        process.wait(10)
    assert impostor.proxy.handshakes == 0


def test_a_result_redis_over_tls_is_verified_with_the_same_files(
    redis_url: str,
    other_redis_url: str,
    authority: Authority,
    simulator: Any,
    start_worker: Callable[..., Any],
    api_factory: Callable[..., Any],
    auth: dict[str, str],
) -> None:
    """``GENQUEUE_RESULT_REDIS_URL=rediss://...`` beside a plain ``REDIS_URL``: the worker's
    result writes, Celery's backend and the API's reads and waits go through the TLS proxy,
    checked against ``GENQUEUE_REDIS_CA_FILE`` and with the client certificate."""
    client = authority.issue("client", server=False)
    server = authority.issue("server", server=True)
    proxy, results_url = _serve(other_redis_url, server, authority.ca.cert_file)
    files = {
        "redis_ca_file": str(authority.ca.cert_file),
        "redis_cert_file": str(client.cert_file),
        "redis_key_file": str(client.key_file),
    }
    try:
        env = {f"GENQUEUE_{name.upper()}": path for name, path in files.items()}
        start_worker(redis_url, simulator.url, GENQUEUE_RESULT_REDIS_URL=results_url, **env)
        api = api_factory(redis_url, result_redis_url=results_url, **files)
        sent = requests.post(
            f"{api.url}/v1/tasks", json={"prompt": "hi", "params": {"max_tokens": 4}},
            headers=auth, timeout=10,
        )  # fmt: skip
        assert sent.status_code == 202, sent.text
        task_id = sent.json()["task_id"]
        done = _wait(api.url, task_id, auth["Authorization"].removeprefix("Bearer "))
        assert done["status"] == "succeeded", done
        assert proxy.handshakes >= 3  # the worker's client, Celery's backend, the API's
    finally:
        proxy.stop()
    results = connections.sync_client(Settings(redis_url=other_redis_url))
    broker = connections.sync_client(Settings(redis_url=redis_url))
    try:
        assert results.exists(f"celery-task-meta-{task_id}") == 1
        assert broker.exists(f"celery-task-meta-{task_id}") == 0
    finally:
        results.close()
        broker.close()
