"""``genqueue up``: the whole service on one machine, stopped cleanly by Ctrl-C.

Redis (embedded unless ``REDIS_URL`` is set), the simulator (unless ``RUNPOD_ENDPOINT_URL`` or
``GENQUEUE_ENDPOINTS_FILE`` names an endpoint; each is checked at start), one worker, the API
and Flower, each a child process in a process group of its own, so that stopping ``up`` stops
every one of them and leaves nothing behind.

The data folder holds every prompt and result: ``up`` and its children run with a umask that keeps
what they write to its owner (folders 0700, files 0600), and close up what older versions left
open. The embedded Redis wants a password, generated once and kept in ``redis/password`` there,
which reaches every child in ``REDIS_URL`` and is printed nowhere; the API key is kept as well
(``api-key``). One ``up`` holds a data folder at a time (:mod:`genqueue.cli.data_lock`), and
leaves ``env`` there for a second terminal while it runs (:mod:`genqueue.cli.env_file`).

The terminal shows a summary and a line per finished task; each component's own output goes to
its log file in ``logs/`` there (:mod:`genqueue.cli.up_output`), and to the terminal too with
``--verbose``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import requests

from genqueue.cli import ports
from genqueue.cli.check import summary as check_summary
from genqueue.cli.data_lock import DataFolderInUse, lock_data_folder, unlock_data_folder
from genqueue.cli.env_file import env_file_of, write_env_file
from genqueue.cli.flower import FLOWER_DB_NAME
from genqueue.cli.up_output import (
    API_KEY_FILE_NAME,
    LOGS_DIR_NAME,
    ComponentDied,
    Death,
    LogFolder,
    death_report,
    endpoint_lines,
    hide_password,
    logs_line,
    open_private_log,
    print_summary,
)
from genqueue.cli.up_tasks import TaskWatcher
from genqueue.embedded_redis import EmbeddedRedis, free_port
from genqueue.errors import PortInUse, StartupFailed
from genqueue.private_files import (
    FILE_MODE,
    PRIVATE_UMASK,
    make_private_dir,
    make_private_tree,
    read_or_create_secret,
)
from worker import upstream
from worker.endpoints.config import load_endpoints
from worker.settings import Settings

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
#: The cap ``up`` gives its own simulator (a real text-generation-webui pod wants 1).
SIMULATOR_MAX_CONCURRENCY = 64


@dataclass
class Stack:
    """The components ``up`` started, stopped in reverse order of start."""

    logs: LogFolder
    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    embedded: EmbeddedRedis | None = None
    watcher: TaskWatcher | None = None

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        process = self.logs.start(name, argv, env)
        self.children.append((name, process))
        return process

    def dead_child(self) -> Death | None:
        for name, process in self.children:
            if process.poll() is not None:
                return Death(name, process.returncode, self.logs.file(name))
        if self.embedded and self.embedded.process and self.embedded.process.poll() is not None:
            return Death("redis", self.embedded.process.returncode, self.logs.file("redis"))
        return None

    def check(self) -> None:
        """Raise :class:`ComponentDied` if a component exited."""
        death = self.dead_child()
        if death is not None:
            raise ComponentDied(death)

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
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
        self.logs.drain()


def _genqueue(*args: str) -> list[str]:
    return [sys.executable, "-m", "genqueue", *args]


def _wait_http(url: str, what: str, stack: Stack) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        stack.check()
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise StartupFailed(f"{what} did not answer at {url} within {START_TIMEOUT_S:g}s")


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def run_up(
    settings: Settings, host: str, api_port: int, flower_port: int, verbose: bool = False
) -> int:
    # Inherited by every child: Redis's AOF and log, Flower's state, all private.
    os.umask(PRIVATE_UMASK)
    data_dir = _private_data_dir(settings.data_dir.resolve())
    try:
        lock = lock_data_folder(data_dir)
    except DataFolderInUse as err:
        print(f"genqueue up: {err}", file=sys.stderr)
        return 1
    try:
        return _run_locked(settings, data_dir, host, (api_port, flower_port), verbose)
    finally:
        unlock_data_folder(lock)


def _run_locked(
    settings: Settings, data_dir: Path, host: str, ports_: tuple[int, int], verbose: bool
) -> int:
    api_port, flower_port = ports_
    try:
        ports.check_free(host, api_port, "the API")
        ports.check_free(host, flower_port, "Flower")
    except PortInUse as err:
        print(f"genqueue up: {err}; choose another with --api-port/--flower-port", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    stack = Stack(LogFolder(data_dir / LOGS_DIR_NAME, verbose))
    print(f"genqueue up: starting (logs in {stack.logs.path}/)", flush=True)
    _warn_upstream()
    try:
        _start(stack, settings, data_dir, host, ports_)
        while True:
            stack.check()
            time.sleep(0.5)
    except _Stop as stop:
        print(f"genqueue up: {stop}, stopping...", flush=True)
        return 0
    except ComponentDied as died:
        print(death_report(died.death), file=sys.stderr, flush=True)
        return 1
    except StartupFailed as err:
        print(f"genqueue up: {err}; stopping everything", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Gone with the service it describes: nothing reads a Redis that is not there.
        env_file_of(data_dir).unlink(missing_ok=True)
        stack.stop()
        print("genqueue up: stopped", flush=True)


def _start(
    stack: Stack, settings: Settings, data_dir: Path, host: str, ports: tuple[int, int]
) -> None:
    env = dict(os.environ)
    # Components' output reaches their log files as they write it, not when a buffer fills.
    env.setdefault("PYTHONUNBUFFERED", "1")
    lines: list[str] = []
    if "redis_url" in settings.model_fields_set:
        redis_url = settings.redis_url
        lines.append(f"  redis      {hide_password(redis_url)} (REDIS_URL)")
    else:
        # Held before it starts: a stop that arrives while it starts still stops it.
        stack.embedded = _embedded_redis(data_dir / "redis", stack.logs.file("redis"))
        stack.embedded.start()
        redis_url = stack.embedded.url
        lines.append(
            f"  redis      {hide_password(redis_url)} (embedded, AOF data in "
            f"{data_dir / 'redis'}, password in {_password_file(data_dir / 'redis')})"
        )
    env["REDIS_URL"] = redis_url

    lines += _endpoints(stack, settings, env)

    env.setdefault("GENQUEUE_WORKER_PROCESSES", "1")
    env.setdefault("GENQUEUE_API_PROCESSES", "1")
    env.setdefault("GENQUEUE_WORKER_METRICS_PORT", str(free_port()))
    api_key = _kept_api_key(env, data_dir)
    flower_auth = _credential(
        env, "FLOWER_BASIC_AUTH", lambda: f"admin:{secrets.token_urlsafe(12)}"
    )
    api_port, flower_port = ports
    stack.spawn("worker", _genqueue("worker"), env)
    stack.spawn("api", _genqueue("api", "--host", host, "--port", str(api_port)), env)
    stack.spawn("flower", _genqueue("flower", "--host", host, "--port", str(flower_port)), env)
    api_url = f"http://{host}:{api_port}"
    flower_url = f"http://{host}:{flower_port}"
    _wait_http(f"{api_url}/healthz", "the API", stack)
    _wait_http(f"{flower_url}/healthcheck", "Flower", stack)
    if not stack.logs.verbose:
        # Before the summary: a task sent as soon as the key is shown gets its line.
        stack.watcher = TaskWatcher(redis_url)
    names = ["redis"] if stack.embedded else []
    names += [name for name, _ in stack.children]
    logs = logs_line(stack.logs.path, names)
    env_file = env_file_of(data_dir)
    write_env_file(env_file, _second_terminal(env, redis_url, api_url, stack))
    generated = (api_key, flower_auth)
    print_summary(lines, env, (api_url, flower_url), generated, data_dir, logs, env_file)
    if stack.watcher is not None:
        stack.watcher.start()


def _endpoints(stack: Stack, settings: Settings, env: dict[str, str]) -> list[str]:
    """The endpoints' lines and their check: those of RUNPOD_ENDPOINT_URL and the endpoints
    file, or, when neither names one, the simulator's, which this starts."""
    endpoints = load_endpoints(settings)
    if endpoints is not None:
        lines = endpoint_lines(endpoints, settings)
    else:
        port = free_port()
        stack.spawn("simulator", _genqueue("simulate", "--port", str(port)), env)
        endpoint = f"http://127.0.0.1:{port}"
        env["RUNPOD_ENDPOINT_URL"] = endpoint
        env.setdefault("RUNPOD_MAX_CONCURRENCY", str(SIMULATOR_MAX_CONCURRENCY))
        _wait_http(f"{endpoint}/v1/models", "the simulator", stack)
        lines = [f"  endpoint   {endpoint} (built-in simulator)"]
        settings = settings.model_copy(update={"runpod_endpoint_url": endpoint})
    return [*lines, f"  check      {check_summary(settings)}"]


def _warn_upstream() -> None:
    """The worker's warning about a changed kombu, Celery or redis-py, here too: its own goes to
    its log file, which a user of ``up`` does not read."""
    said = upstream.warning(upstream.all_changes())
    if said is not None:
        print(f"genqueue up: warning: {said}", file=sys.stderr, flush=True)


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


def _embedded_redis(redis_dir: Path, log_file: Path) -> EmbeddedRedis:
    """The embedded Redis, with the password kept in its folder (made on the first start)."""
    make_private_dir(redis_dir)
    password = read_or_create_secret(_password_file(redis_dir))
    os.close(open_private_log(log_file))  # rewritten at each start, like the other logs
    return EmbeddedRedis(redis_dir, password=password, log_file=log_file)


def _kept_api_key(env: dict[str, str], data_dir: Path) -> str | None:
    """The API key kept in the data folder (made on the first start) when GENQUEUE_API_KEYS
    is unset: the tasks of an earlier run stay the same tenant's; ``None`` if it is set."""
    if env.get("GENQUEUE_API_KEYS"):
        return None
    key = read_or_create_secret(data_dir / API_KEY_FILE_NAME)
    env["GENQUEUE_API_KEYS"] = key
    return key


def _second_terminal(
    env: dict[str, str], redis_url: str, api_url: str, stack: Stack
) -> dict[str, str]:
    """What a second terminal needs: Redis (password included), the API and a key it takes,
    and the endpoint when it is ``up``'s own simulator."""
    values = {"REDIS_URL": redis_url, "GENQUEUE_API_URL": api_url}
    keys_ = [key.strip() for key in env.get("GENQUEUE_API_KEYS", "").split(",") if key.strip()]
    if keys_:
        values["GENQUEUE_API_KEY"] = keys_[0]
    if any(name == "simulator" for name, _ in stack.children):
        values["RUNPOD_ENDPOINT_URL"] = env["RUNPOD_ENDPOINT_URL"]
        values["RUNPOD_MAX_CONCURRENCY"] = env["RUNPOD_MAX_CONCURRENCY"]
    return values


def _credential(env: dict[str, str], name: str, make: object) -> str | None:
    """A generated value for ``name`` when it is unset; ``None`` if the operator set it."""
    if env.get(name):
        return None
    value = make()  # type: ignore[operator]
    env[name] = value
    return str(value)
