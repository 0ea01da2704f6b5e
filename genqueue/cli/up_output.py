"""Where the output of ``genqueue up`` goes: a summary on the terminal, each component's in a file.

Each component (``redis``, ``simulator``, ``worker``, ``api``, ``flower``) writes to
``<data folder>/logs/<name>.log``, rewritten at each start, its owner's alone (0600) like the
rest of the data folder. With ``--verbose`` the output is copied to the terminal as well. A
component that dies is reported on the terminal with its exit status and its log's last lines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from genqueue.errors import StartupFailed
from genqueue.private_files import FILE_MODE, make_private_dir
from worker.endpoints.config import DEFAULT_ENDPOINT, OPENAI_STYLE_KINDS, Endpoints
from worker.settings import Settings

LOGS_DIR_NAME = "logs"
#: The API key ``up`` generates, kept in the data folder for the next start.
API_KEY_FILE_NAME = "api-key"
DEFAULT_DATA_DIR: Path = Settings.model_fields["data_dir"].default
#: How many of a dead component's last log lines the terminal shows.
TAIL_LINES = 20
#: How much of the end of a log file is read for them.
_TAIL_BYTES = 64 * 1024
_PUMP_JOIN_S = 5.0


def open_private_log(path: Path) -> int:
    """A file descriptor writing ``path`` from empty, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


@dataclass
class LogFolder:
    """The components' log files, and whether their output goes to the terminal too.

    :param path: the folder (made 0700 if missing).
    :param verbose: copy every component's output to this process's stdout as well.
    """

    path: Path
    verbose: bool = False
    _pumps: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        make_private_dir(self.path)

    def file(self, name: str) -> Path:
        return self.path / f"{name}.log"

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a session of its own, its stdout and stderr to ``name``'s log."""
        fd = open_private_log(self.file(name))
        try:
            output: int = subprocess.PIPE if self.verbose else fd
            process = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            if self.verbose:
                assert process.stdout is not None
                pump = threading.Thread(
                    target=_tee, args=(process.stdout, os.dup(fd)), name=f"up-{name}", daemon=True
                )
                pump.start()
                self._pumps.append(pump)
        finally:
            os.close(fd)
        return process

    def drain(self) -> None:
        """Wait for the output of stopped components to be copied."""
        for pump in self._pumps:
            pump.join(_PUMP_JOIN_S)


def _tee(pipe: IO[bytes], fd: int) -> None:
    """Copy ``pipe`` to the log file ``fd`` and to the terminal until the component closes it."""
    out = sys.stdout.buffer
    try:
        while chunk := pipe.read1(_TAIL_BYTES):  # type: ignore[attr-defined]
            os.write(fd, chunk)
            out.write(chunk)
            out.flush()
    except (OSError, ValueError):
        pass  # the terminal went away, or up is exiting: the log file has what it got
    finally:
        os.close(fd)
        pipe.close()


@dataclass(frozen=True)
class Death:
    """A component that exited while ``up`` ran."""

    name: str
    returncode: int
    log: Path | None

    def describe(self) -> str:
        if self.returncode < 0:
            try:
                how = f"was killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                how = f"was killed by signal {-self.returncode}"
        else:
            how = f"exited with status {self.returncode}"
        return f"{self.name} {how}"


class ComponentDied(StartupFailed):
    """Raised when a component exits while ``up`` starts or runs."""

    def __init__(self, death: Death) -> None:
        super().__init__(death.describe())
        self.death = death


def log_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` non-blank lines of ``path`` (none if it cannot be read)."""
    try:
        with path.open("rb") as file:
            file.seek(max(0, path.stat().st_size - _TAIL_BYTES))
            text = file.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def death_report(death: Death) -> str:
    """What the terminal shows of a dead component: who, how, and its log's last lines."""
    lines = [f"genqueue up: {death.describe()}; stopping everything"]
    if death.log is not None:
        tail = log_tail(death.log)
        lines.append(f"last lines of {death.log}:" if tail else f"its log {death.log} is empty")
        lines += [f"  | {line}" for line in tail]
    return "\n".join(lines)


def logs_line(logs: Path, names: Iterable[str]) -> str:
    return f"  logs       {logs}/{{{','.join(names)}}}.log"


def endpoint_lines(endpoints: Endpoints, settings: Settings) -> list[str]:
    """A line per configured endpoint: where its generations go, and what named it."""
    if settings.endpoints_file is None:
        return [f"  endpoint   {endpoints.get(None).completions_url} (RUNPOD_ENDPOINT_URL)"]
    lines = []
    for name in endpoints.names:
        spec = endpoints.get(name)
        url = spec.completions_url if spec.kind in OPENAI_STYLE_KINDS else spec.base_url
        from_variable = name == DEFAULT_ENDPOINT and spec.url == settings.runpod_endpoint_url
        origin = "RUNPOD_ENDPOINT_URL" if from_variable else "GENQUEUE_ENDPOINTS_FILE"
        if name == endpoints.default and len(endpoints.names) > 1:
            origin += ", the default"
        lines.append(f"  endpoint   {name}: {url} ({origin})")
    return lines


def hide_password(url: str) -> str:
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


def _readers(data_dir: Path) -> str:
    """Which commands find the env file: those run where it was started, or told the folder."""
    if data_dir == (Path.cwd() / DEFAULT_DATA_DIR).resolve():
        return f"run in {Path.cwd()}"
    return f"given GENQUEUE_DATA_DIR={data_dir}"


def print_summary(
    lines: list[str],
    env: dict[str, str],
    urls: tuple[str, str],
    generated: tuple[str | None, str | None],
    data_dir: Path,
    logs: str,
    env_file: Path,
) -> None:
    """What runs where, the generated credentials, the log files and a ``curl`` line that works.

    :param lines: the lines already made (Redis, the endpoint).
    :param urls: the API's and Flower's.
    :param generated: the API key (kept in the data folder) and Flower's ``user:password``,
        when ``up`` made them.
    :param logs: the line that names the log files.
    :param env_file: what ``up`` wrote for a second terminal.
    """
    api_url, flower_url = urls
    api_key, flower_auth = generated
    processes = env["GENQUEUE_WORKER_PROCESSES"]
    lines.append(f"  worker     {processes} process(es), genqueue.generate")
    lines.append(f"  api        {api_url}  (OpenAPI: {api_url}/docs)")
    lines.append(f"  metrics    {api_url}/metrics (API), {_worker_metrics(env)} (worker)")
    lines.append(f"  flower     {flower_url}")
    if api_key:
        kept = data_dir / API_KEY_FILE_NAME
        lines.append(f"  api key    {api_key}  (kept in {kept}; set GENQUEUE_API_KEYS to choose)")
    if flower_auth:
        user, _, password = flower_auth.partition(":")
        lines.append(f"  flower     user {user}, password {password}  (generated)")
    lines.append(logs)
    lines.append(f"  env        {env_file}  (read by genqueue commands {_readers(data_dir)})")
    key = api_key or "$GENQUEUE_API_KEY"
    body = '{"prompt": "How can I make a cake?", "params": {"max_tokens": 50}}'
    lines += [
        "try it:",
        f"  curl -s -X POST {api_url}/v1/tasks -H 'Authorization: Bearer {key}' "
        f"-H 'Content-Type: application/json' -d '{body}'",
        f"  curl -s '{api_url}/v1/tasks/TASK_ID?wait=30' -H 'Authorization: Bearer {key}'",
        f"another terminal: set -a; . {env_file}; set +a",
        "Ctrl-C stops everything; --verbose shows every component's output.",
    ]
    print(f"genqueue up: running (data in {data_dir})", flush=True)
    print("\n".join(lines), flush=True)
