"""llama.cpp's server (llama-cpp-python's ``python -m llama_cpp.server``) on loopback, serving the
tiny random model of :mod:`tests.real_servers.tinymodel`, and a counting proxy in front of it.

The group runs with ``scripts/test --real-servers`` (``GENQUEUE_TEST_REAL_SERVERS=1``); without it
every test here is skipped with a line saying how to run them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from genqueue.embedded_redis import free_port
from tests.real_servers.tinymodel import CONTEXT, write_tiny_model

ENABLED = os.environ.get("GENQUEUE_TEST_REAL_SERVERS") == "1"
HOW_TO_RUN = (
    "tests against llama.cpp's server: run scripts/test --real-servers "
    "(after pip install -e '.[dev,real-servers]', which compiles llama.cpp once)"
)
#: Every test of the group carries this (``-m real_servers`` selects them).
REAL_SERVERS = [
    pytest.mark.real_servers,
    pytest.mark.skipif(not ENABLED, reason=HOW_TO_RUN),
    pytest.mark.timeout(120),
]


class LlamaServer:
    """One ``python -m llama_cpp.server`` process that a test may kill and start again."""

    def __init__(self, model: Path, log_path: Path) -> None:
        self.model = model
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout_s: float = 60.0) -> float:
        """Start the server; returns ``time.monotonic()`` when it first answered."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "llama_cpp.server", "--model", str(self.model),
                    "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(CONTEXT),
                    "--n_threads", "1", "--n_batch", str(CONTEXT), "--verbose", "false",
                ],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama.cpp's server exited:\n{self.log()[-3000:]}")
            try:
                requests.get(f"{self.url}/v1/models", timeout=1).raise_for_status()
                return time.monotonic()
            except requests.RequestException:
                time.sleep(0.05)
        raise TimeoutError(f"llama.cpp's server did not answer:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _require_llama_cpp() -> None:
    for module in ("llama_cpp", "gguf", "sse_starlette", "starlette_context"):
        if importlib.util.find_spec(module) is None:
            pytest.fail(f"{module} is not installed: pip install -e '.[dev,real-servers]'")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_llama_cpp()
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny-random-llama.gguf")


@pytest.fixture(scope="module")
def llama_server(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """One server for the module's tests that leave it running."""
    server = LlamaServer(tiny_model, tmp_path_factory.mktemp("llama") / "server.log")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def own_llama_server(tiny_model: Path, tmp_path: Path) -> Iterator[LlamaServer]:
    """A server of the test's own, to kill and start again."""
    server = LlamaServer(tiny_model, tmp_path / "llama.log")
    yield server
    server.kill()


class CountingProxy:
    """Forwards POSTs to ``upstream`` and counts what arrives: llama.cpp's server queues extra
    requests silently, so the calls in flight are counted in front of it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.arrived = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, answer = proxy.forward(self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def forward(self, path: str, body: bytes) -> tuple[int, bytes]:
        with self._lock:
            self.arrived += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            request = urllib.request.Request(
                self.upstream + path, data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as err:
                return err.code, err.read()
        finally:
            with self._lock:
                self.in_flight -= 1

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def counting_proxy(llama_server: LlamaServer) -> Iterator[CountingProxy]:
    proxy = CountingProxy(llama_server.url)
    yield proxy
    proxy.close()
