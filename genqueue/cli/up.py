"""``genqueue up``: the whole service on one machine, stopped cleanly by Ctrl-C.

Redis (embedded unless ``REDIS_URL`` is set), the simulator (unless ``RUNPOD_ENDPOINT_URL`` is
set), one worker, the API and Flower, each a child process in a process group of its own, so
that stopping ``up`` stops every one of them and leaves nothing behind.

The data folder holds every prompt and result: ``up`` and its children run with a umask that keeps
what they write to its owner (folders 0700, files 0600), and close up what older versions left
open. The embedded Redis wants a password, generated once and kept in ``redis/password`` there,
which reaches every child in ``REDIS_URL`` and is printed nowhere.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import requests

from genqueue.cli.flower import FLOWER_DB_NAME
from genqueue.embedded_redis import EmbeddedRedis, free_port
from genqueue.private_files import (
    FILE_MODE,
    PRIVATE_UMASK,
    make_private_dir,
    make_private_tree,
    read_or_create_secret,
)
from worker.settings import Settings

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
#: The cap ``up`` gives its own simulator (a real text-generation-webui pod wants 1).
SIMULATOR_MAX_CONCURRENCY = 64


class PortInUse(Exception):
    """Raised when a port ``up`` must listen on is taken."""


def check_port_free(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise PortInUse(
                f"{what} port {port} on {host} is already in use ({err.strerror})"
            ) from None


@dataclass
class Stack:
    """The child processes of ``up``, stopped in reverse order of start."""

    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    embedded: EmbeddedRedis | None = None

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        self.children.append((name, process))
        return process

    def dead_child(self) -> str | None:
        for name, process in self.children:
            if process.poll() is not None:
                return f"{name} exited with status {process.returncode}"
        if self.embedded and self.embedded.process and self.embedded.process.poll() is not None:
            return "the embedded Redis exited"
        return None

    def stop(self) -> None:
        for _, process in reversed(self.children):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for _, process in reversed(self.children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            # Whatever is left in the child's group (worker processes, say) goes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if self.embedded is not None:
            self.embedded.stop()


def _genqueue(*args: str) -> list[str]:
    return [sys.executable, "-m", "genqueue", *args]


def _wait_http(url: str, what: str, stack: Stack) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = stack.dead_child()
        if dead:
            raise RuntimeError(dead)
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer at {url} within {START_TIMEOUT_S:g}s")


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def run_up(settings: Settings, host: str, api_port: int, flower_port: int) -> int:
    try:
        check_port_free(host, api_port, "the API")
        check_port_free(host, flower_port, "Flower")
    except PortInUse as err:
        print(f"genqueue up: {err}; choose another with --api-port/--flower-port", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    # Inherited by every child: Redis's AOF and log, Flower's state, all private.
    os.umask(PRIVATE_UMASK)
    stack = Stack()
    try:
        _start(stack, settings, host, api_port, flower_port)
        while True:
            dead = stack.dead_child()
            if dead:
                print(f"genqueue up: {dead}; stopping everything", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.5)
    except _Stop as stop:
        print(f"genqueue up: {stop}, stopping...", flush=True)
        return 0
    except RuntimeError as err:
        print(f"genqueue up: {err}; stopping everything", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        print("genqueue up: stopped", flush=True)


def _start(stack: Stack, settings: Settings, host: str, api_port: int, flower_port: int) -> None:
    env = dict(os.environ)
    lines: list[str] = []
    data_dir = _private_data_dir(settings.data_dir.resolve())
    if "redis_url" in settings.model_fields_set:
        redis_url = settings.redis_url
        lines.append(f"  redis      {_hide_password(redis_url)} (REDIS_URL)")
    else:
        stack.embedded = _embedded_redis(data_dir / "redis").start()
        redis_url = stack.embedded.url
        lines.append(
            f"  redis      {_hide_password(redis_url)} (embedded, AOF data in "
            f"{data_dir / 'redis'}, password in {_password_file(data_dir / 'redis')})"
        )
    env["REDIS_URL"] = redis_url

    if settings.runpod_endpoint_url is None:
        port = free_port()
        stack.spawn("the simulator", _genqueue("simulate", "--port", str(port)), env)
        endpoint = f"http://127.0.0.1:{port}"
        env["RUNPOD_ENDPOINT_URL"] = endpoint
        env.setdefault("RUNPOD_MAX_CONCURRENCY", str(SIMULATOR_MAX_CONCURRENCY))
        _wait_http(f"{endpoint}/v1/models", "the simulator", stack)
        lines.append(f"  endpoint   {endpoint} (built-in simulator)")
    else:
        lines.append(f"  endpoint   {settings.completions_url} (RUNPOD_ENDPOINT_URL)")

    env.setdefault("GENQUEUE_WORKER_PROCESSES", "1")
    env.setdefault("GENQUEUE_API_PROCESSES", "1")
    env.setdefault("GENQUEUE_WORKER_METRICS_PORT", str(free_port()))
    api_key = _credential(env, "GENQUEUE_API_KEYS", lambda: secrets.token_urlsafe(24))
    flower_auth = _credential(
        env, "FLOWER_BASIC_AUTH", lambda: f"admin:{secrets.token_urlsafe(12)}"
    )
    stack.spawn("the worker", _genqueue("worker"), env)
    stack.spawn("the API", _genqueue("api", "--host", host, "--port", str(api_port)), env)
    stack.spawn("Flower", _genqueue("flower", "--host", host, "--port", str(flower_port)), env)
    api_url = f"http://{host}:{api_port}"
    flower_url = f"http://{host}:{flower_port}"
    _wait_http(f"{api_url}/healthz", "the API", stack)
    _wait_http(f"{flower_url}/healthcheck", "Flower", stack)
    _print_summary(lines, env, api_url, flower_url, api_key, flower_auth, data_dir)


def _private_data_dir(data_dir: Path) -> Path:
    """The data folder, its Redis folder and Flower's state closed to other users."""
    make_private_dir(data_dir)
    if (data_dir / "redis").is_dir():
        make_private_tree(data_dir / "redis")
    for state in data_dir.glob(f"{FLOWER_DB_NAME}*"):
        if state.is_file() and not state.is_symlink():
            state.chmod(FILE_MODE)
    return data_dir


def _password_file(redis_dir: Path) -> Path:
    return redis_dir / "password"


def _embedded_redis(redis_dir: Path) -> EmbeddedRedis:
    """The embedded Redis, with the password kept in its folder (made on the first start)."""
    make_private_dir(redis_dir)
    return EmbeddedRedis(redis_dir, password=read_or_create_secret(_password_file(redis_dir)))


def _credential(env: dict[str, str], name: str, make: object) -> str | None:
    """A generated value for ``name`` when it is unset; ``None`` if the operator set it."""
    if env.get(name):
        return None
    value = make()  # type: ignore[operator]
    env[name] = value
    return str(value)


def _hide_password(url: str) -> str:
    """``url`` with the credentials of each address (a ``sentinel://`` URL has several) hidden."""
    return ";".join(_hide_one(part) for part in url.split(";"))


def _hide_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.split('@', 1)[1]}"


def _worker_metrics(env: dict[str, str]) -> str:
    port = int(env["GENQUEUE_WORKER_METRICS_PORT"] or 0)
    if port <= 0:
        return "off"
    host = env.get("GENQUEUE_WORKER_METRICS_HOST") or "127.0.0.1"
    count = int(env["GENQUEUE_WORKER_PROCESSES"] or 0) or os.cpu_count() or 1
    ports = str(port) if count <= 1 else f"{port}-{port + count - 1}"
    return f"http://{host}:{ports}/metrics"


def _print_summary(
    lines: list[str],
    env: dict[str, str],
    api_url: str,
    flower_url: str,
    api_key: str | None,
    flower_auth: str | None,
    data_dir: Path,
) -> None:
    processes = env["GENQUEUE_WORKER_PROCESSES"]
    lines.append(f"  worker     {processes} process(es), genqueue.generate")
    lines.append(f"  api        {api_url}  (OpenAPI: {api_url}/docs)")
    lines.append(f"  metrics    {api_url}/metrics (API), {_worker_metrics(env)} (worker)")
    lines.append(f"  flower     {flower_url}")
    if api_key:
        lines.append(f"  api key    {api_key}  (generated; set GENQUEUE_API_KEYS to choose)")
    if flower_auth:
        user, _, password = flower_auth.partition(":")
        lines.append(f"  flower     user {user}, password {password}  (generated)")
    key = api_key or "$GENQUEUE_API_KEY"
    body = '{"prompt": "How can I make a cake?", "params": {"max_tokens": 50}}'
    print(f"genqueue up: running (data in {data_dir})", flush=True)
    print("\n".join(lines), flush=True)
    print("try it:", flush=True)
    print(
        f"  curl -s -X POST {api_url}/v1/tasks -H 'Authorization: Bearer {key}' "
        f"-H 'Content-Type: application/json' -d '{body}'",
        flush=True,
    )
    print(f"  curl -s '{api_url}/v1/tasks/TASK_ID?wait=30' -H 'Authorization: Bearer {key}'")
    print("Ctrl-C stops everything.", flush=True)
