"""``genqueue api`` with several processes: one SO_REUSEPORT socket each, supervised."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from genqueue.cli.api_processes import reuseport_supported
from genqueue.embedded_redis import free_port

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not reuseport_supported(), reason="needs SO_REUSEPORT (Linux)"),
]


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "genqueue api exited"
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError("genqueue api did not answer in time")


def _children(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children()


@contextlib.contextmanager
def _api(redis_url: str, tmp_path: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "REDIS_URL": redis_url, "GENQUEUE_API_PROCESSES": "2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "genqueue", "api", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", process)
        yield process
    finally:
        if process.poll() is None:
            for child in _children(process.pid):
                child.kill()
            process.kill()
            process.wait()


def _request(sock: socket.socket) -> None:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")


def test_new_connections_reach_every_process(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    with _api(redis_url, tmp_path, port) as api:
        children = _children(api.pid)
        assert len(children) == 2
        # 64 fresh connections, all kept open: each is held by the process that accepted it.
        conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(64)]
        try:
            for conn in conns:
                _request(conn)
            held = [
                sum(
                    1
                    for c in child.net_connections(kind="tcp")
                    if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
                )
                for child in children
            ]
        finally:
            for conn in conns:
                conn.close()
        assert sum(held) == 64
        assert min(held) > 0, f"one process accepted every connection: {held}"


def test_a_dead_process_is_restarted_and_sigterm_stops_all(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    with _api(redis_url, tmp_path, port) as api:
        first, _ = _children(api.pid)
        first.kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = {child.pid for child in _children(api.pid)}
            if len(pids) == 2 and first.pid not in pids:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the killed process was not started again")
        for _ in range(20):
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200

        children = _children(api.pid)
        api.send_signal(signal.SIGTERM)
        assert api.wait(timeout=20) == 0
        for child in children:
            assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass


def test_port_in_use_is_a_clear_error(redis_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "genqueue", "api", "--port", str(port)],
            cwd=tmp_path,
            env={**os.environ, "REDIS_URL": redis_url, "GENQUEUE_API_PROCESSES": "2"},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_processes_exit_when_the_parent_is_killed(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    with _api(redis_url, tmp_path, port) as api:
        children = _children(api.pid)
        api.kill()
        api.wait()
        _, alive = psutil.wait_procs(children, timeout=20)
        assert alive == []
