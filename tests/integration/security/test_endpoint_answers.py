"""Answers of any size: read with a byte cap, decompressed in bounded steps, refused when too large.

The simulator serves the bodies (``size_bytes``, ``gzip``): a 64 MiB completion, a gzip bomb that
is a small download inflating to 64 MiB, a 32 MiB error page, an oversized serverless job
output. Memory is measured with tracemalloc in process (the simulator then runs in a process of
its own, so that its bodies are not counted) and with the worker's peak RSS.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from pydantic import SecretStr

from genqueue.embedded_redis import free_port
from tests.conftest import SimulatorControl
from tests.integration.security.helpers import wait_error, wait_http
from worker.endpoints.answers import RESPONSE_BYTES_PER_TOKEN, RESPONSE_OVERHEAD_BYTES
from worker.endpoints.completions import CompletionClient, EndpointConfig, endpoint_session
from worker.endpoints.serverless import ServerlessClient, job_input
from worker.errors import InvalidEndpointResponse, RetryableEndpointError
from worker.webhooks.sender import WebhookPolicy, WebhookSender

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
LIMIT_8 = RESPONSE_OVERHEAD_BYTES + 8 * RESPONSE_BYTES_PER_TOKEN  # the cap for max_tokens=8


@pytest.fixture
def simulator_process(tmp_path: Path) -> Iterator[SimulatorControl]:
    """``genqueue simulate`` in a process of its own."""
    port = free_port()
    with (tmp_path / "simulator.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "genqueue", "simulate", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/v1/models", process)
        yield SimulatorControl(_Served(url))  # type: ignore[arg-type]
    finally:
        process.kill()
        process.wait()


class _Served:
    def __init__(self, url: str) -> None:
        self.url = url


@pytest.fixture
def client(simulator_process) -> Iterator[CompletionClient]:
    simulator = simulator_process
    config = EndpointConfig(completions_url=f"{simulator.url}/v1/completions", name="big")
    completion_client = CompletionClient(config)
    yield completion_client
    completion_client.close()


def peak_bytes(call: Callable[[], Any]) -> int:
    """The most memory Python allocated while ``call`` ran (its exception is swallowed)."""
    tracemalloc.start()
    try:
        call()
    except Exception:  # the caller checks the outcome separately
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_an_oversized_answer_is_refused_and_its_connection_dropped(
    client, simulator_process
) -> None:
    simulator = simulator_process
    simulator.script({"size_bytes": 64 * MiB}, "ok")
    with pytest.raises(InvalidEndpointResponse) as info:
        client.complete("hi", {"max_tokens": 8})
    assert info.value.message == (
        f"endpoint 'big' answered 200 with a body over {LIMIT_8} bytes, the most genqueue reads "
        "for this request (GENQUEUE_ENDPOINT_MAX_RESPONSE_BYTES and max_tokens set it)"
    )
    assert info.value.error_type == "invalid_response"
    # The unread rest is not taken for the next answer: the next call gets its own.
    result = client.complete("hi", {"max_tokens": 3})
    assert len(result.text.split()) == 3
    assert simulator.stats()["calls"] == 2


def test_an_answer_under_its_cap_is_read_whole(client, simulator_process) -> None:
    simulator = simulator_process
    simulator.script({"size_bytes": LIMIT_8 - 1024})
    result = client.complete("hi", {"max_tokens": 8})
    assert LIMIT_8 - 2048 < len(result.text) < LIMIT_8


def test_a_gzip_bomb_is_not_inflated(client, simulator_process) -> None:
    simulator = simulator_process
    simulator.script({"size_bytes": 64 * MiB, "gzip": True})
    errors: list[Exception] = []

    def call() -> None:
        try:
            client.complete("hi", {"max_tokens": 8})
        except Exception as err:
            errors.append(err)
            raise

    peak = peak_bytes(call)
    assert isinstance(errors[0], InvalidEndpointResponse), errors
    assert f"body over {LIMIT_8} bytes" in str(errors[0])
    assert peak < 4 * MiB, peak


def test_a_huge_error_page_is_read_only_in_part(client, simulator_process) -> None:
    simulator = simulator_process
    simulator.script({"status": 500, "size_bytes": 32 * MiB})
    errors: list[Exception] = []

    def call() -> None:
        try:
            client.complete("hi", {"max_tokens": 8})
        except Exception as err:
            errors.append(err)
            raise

    peak = peak_bytes(call)
    error = errors[0]
    assert isinstance(error, RetryableEndpointError) and error.status_code == 500
    assert error.message == "endpoint 'big' answered 500: " + "x" * 300 + "..."
    assert peak < 4 * MiB, peak


def test_the_ceiling_setting_bounds_any_answer(simulator) -> None:
    config = EndpointConfig(
        completions_url=f"{simulator.url}/v1/completions", max_response_bytes=100_000
    )
    capped = CompletionClient(config)
    simulator.script({"size_bytes": 200_000})
    with pytest.raises(InvalidEndpointResponse, match="body over 100000 bytes"):
        capped.complete("hi", {})  # no max_tokens: the ceiling alone
    capped.close()


def test_a_serverless_job_output_is_capped(simulator) -> None:
    session = endpoint_session(simulator.url, 2)
    serverless = ServerlessClient(session, simulator.url, None, (5.0, 5.0), name="spare")
    simulator.script({"size_bytes": 2 * MiB})
    job = serverless.submit(job_input("hi", None, {"max_tokens": 8}))
    deadline = time.monotonic() + 10
    while serverless.status(job.job_id).state != "COMPLETED":  # no max_tokens: 16 MiB
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(InvalidEndpointResponse) as info:
        serverless.status(job.job_id, max_tokens=8)
    assert info.value.message.startswith(
        f"endpoint 'spare' answered 200 with a body over {LIMIT_8} bytes"
    )
    session.close()


# --- through a worker ------------------------------------------------------------------------


def _send(celery_client: Any) -> Any:
    request = {"prompt": "hello", "params": {"max_tokens": 8}}
    return celery_client.send_task("genqueue.generate", kwargs={"request": request})


def _wait_error(client: redis.Redis, task_id: str) -> dict[str, Any]:
    return wait_error(client, task_id, timeout_s=60)


def _peak_rss_bytes(pid: int) -> int:
    """The most memory the process ever held (Linux's VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
def test_a_worker_refuses_a_64_mib_answer_and_a_gzip_bomb(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    worker = start_worker(redis_url, simulator.url, GENQUEUE_RETRY_MAX_ATTEMPTS=3)
    assert _send(celery_client).get(timeout=30)["text"]  # warmed up: its peak is its baseline
    children = psutil.Process(worker.process.pid).children(recursive=True)
    pid = next(c.pid for c in children if "genqueue" in " ".join(c.cmdline()))
    baseline = _peak_rss_bytes(pid)

    simulator.script({"size_bytes": 64 * MiB}, {"size_bytes": 64 * MiB, "gzip": True})
    for _ in range(2):
        result = _send(celery_client)
        error = _wait_error(redis_client, result.id)
        assert error["type"] == "invalid_response", error
        assert error["message"].startswith(
            f"endpoint 'default' answered 200 with a body over {LIMIT_8} bytes"
        )
        meta = redis_client.get(f"celery-task-meta-{result.id}") or b""
        assert len(meta) < 10_000
    assert simulator.stats()["calls"] == 3  # invalid_response is permanent: no retry
    assert _peak_rss_bytes(pid) - baseline < 32 * MiB


# --- webhooks --------------------------------------------------------------------------------


@pytest.fixture
def endless_receiver() -> Iterator[str]:
    """Answers 200 with a 1 GB body it sends 64 KiB at a time, until the client hangs up."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
                while not stop.is_set():
                    try:
                        conn.sendall(b"x" * 65536)
                    except OSError:
                        break
                    time.sleep(0.1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    stop.set()
    thread.join(5)
    server.close()


def test_a_webhook_answer_is_not_read(redis_client, endless_receiver) -> None:
    task_id = "t-webhook-answer"
    redis_client.hset(
        f"genqueue:task:{task_id}",
        mapping={
            "created_at": "2026-01-01T00:00:00.000Z",
            "attempts": "1",
            "error": json.dumps({"type": "expired", "message": "late"}),
        },
    )
    redis_client.set(f"celery-task-meta-{task_id}", json.dumps({"status": "FAILURE"}))
    policy = WebhookPolicy(secret=SecretStr("s"), allowlist=("127.0.0.1",), timeout_s=2)
    sender = WebhookSender(redis_client, policy)
    outcome: list[str] = []
    thread = threading.Thread(
        target=lambda: outcome.append(
            sender.deliver(task_id, endless_receiver, time.time(), 0).outcome
        ),
        daemon=True,
    )
    thread.start()
    thread.join(5)
    assert outcome == ["delivered"], "the sender kept reading the receiver's answer"
    sender.close()
