"""Helpers of the security suite: a real Flower process, tiny HTTP servers, Redis contents."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
import requests

from genqueue.embedded_redis import free_port


def wait_until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """What ``check`` returns once it is truthy, polled every 0.1 s for up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def wait_http(url: str, process: subprocess.Popen[bytes] | None, timeout_s: float = 30) -> None:
    """Return once ``url`` answers 200; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


@dataclass
class FlowerProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_flower(redis_url: str, workdir: Path, **env: str) -> Iterator[FlowerProcess]:
    """``genqueue flower`` on a free loopback port, with ``env`` added to a clean environment."""
    port = free_port()
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GENQUEUE_", "FLOWER_", "RUNPOD_", "REDIS_"))
    }
    clean.update(
        REDIS_URL=redis_url, GENQUEUE_DATA_DIR=str(workdir / "flower-data"), PYTHONUNBUFFERED="1"
    )
    clean.update(env)
    log_path = workdir / f"flower-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "genqueue",
                "flower",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=workdir,
            env=clean,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    flower = FlowerProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_http(f"{flower.url}/healthcheck", process)
        yield flower
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class TinyServer:
    """An ``http.server`` in a thread that answers every request with ``respond``.

    With ``tls``, it speaks HTTPS with that server context.
    """

    respond: Callable[[BaseHTTPRequestHandler], tuple[int, dict[str, str], bytes]]
    hits: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    tls: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def __enter__(self) -> TinyServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                owner.hits.append(f"{self.command} {self.path}")
                status, headers, body = owner.respond(self)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _values(client: redis.Redis, key: bytes) -> list[Any]:
    kind = client.type(key)
    if kind == b"string":
        return [client.get(key)]
    if kind == b"hash":
        return [part for item in client.hgetall(key).items() for part in item]
    if kind == b"list":
        return list(client.lrange(key, 0, -1))
    if kind == b"set":
        return list(client.smembers(key))
    if kind == b"zset":
        return list(client.zrange(key, 0, -1))
    if kind == b"stream":
        return [repr(entry) for entry in client.xrange(key) or []]
    return []


def redis_contents(client: redis.Redis) -> dict[bytes, bytes]:
    """Every key with its ``DUMP`` and its value read by type, as bytes to search.

    ``DUMP`` alone is not enough: Redis LZF-compresses longer strings in it.
    """
    contents: dict[bytes, bytes] = {}
    for key in client.scan_iter(count=1000):
        parts = [key, client.dump(key) or b"", *_values(client, key)]
        contents[_as_bytes(key)] = b"\n".join(_as_bytes(part) for part in parts if part)
    return contents


def wait_error(client: redis.Redis, task_id: str, timeout_s: float) -> dict[str, Any]:
    """The ``error`` a task's record holds, once the worker has written it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        raw = client.hget(f"genqueue:task:{task_id}", "error")
        if raw:
            return dict(json.loads(raw))
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} has no error after {timeout_s}s")
