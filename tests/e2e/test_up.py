"""``genqueue up`` as a user runs it: nothing configured, then HTTP, the client, Celery, Flower."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shelve
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import requests
from celery import Celery
from dotenv import dotenv_values

from api_producer import GenQueueClient
from genqueue.embedded_redis import EmbeddedRedis, free_port

pytestmark = pytest.mark.timeout(150)


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for_line(
    log: Path, pattern: str, process: subprocess.Popen[bytes], timeout_s: float
) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if re.search(pattern, text):
            return text
        if process.poll() is not None:
            raise AssertionError(f"genqueue up exited with {process.returncode}:\n{text}")
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} in the output:\n{log.read_text(errors='replace')}")


def _up_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GENQUEUE_", "RUNPOD_", "FLOWER_", "REDIS_"))
    }


def _start_up(
    cwd: Path,
    log: Path,
    env: dict[str, str],
    api_port: int,
    flower_port: int,
    *options: str,
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "genqueue",
                "up",
                "--api-port",
                str(api_port),
                "--flower-port",
                str(flower_port),
                *options,
            ],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop_up(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(60)


def _embedded_redis_url(text: str, data_dir: Path) -> str:
    """The embedded Redis's URL: the printed address, with the password from its file."""
    address = re.search(r"redis\s+redis://\*\*\*@(\S+) \(embedded", text).group(1)
    password = (data_dir / "redis" / "password").read_text().strip()
    return f"redis://:{password}@{address}"


#: What ``genqueue up`` prints once everything answers, line by line (embedded Redis, simulator).
SUMMARY = [
    r"genqueue up: starting \(logs in (?P<logs>\S+)/\)",
    r"genqueue up: running \(data in (?P<data>\S+)\)",
    r"  redis      redis://\*\*\*@127\.0\.0\.1:\d+/0 \(embedded, AOF data in (?P=data)/redis, "
    r"password in (?P=data)/redis/password\)",
    r"  endpoint   http://127\.0\.0\.1:\d+ \(built-in simulator\)",
    r"  check      default: ready \(serves genqueue-simulated-model; 1 token in \d+ ms\)",
    r"  worker     1 process\(es\), genqueue\.generate",
    r"  api        (?P<api>http://127\.0\.0\.1:\d+)  \(OpenAPI: (?P=api)/docs\)",
    r"  metrics    (?P=api)/metrics \(API\), http://127\.0\.0\.1:\d+/metrics \(worker\)",
    r"  flower     http://127\.0\.0\.1:\d+",
    r"  api key    (?P<key>\S+)  \(kept in (?P=data)/api-key; set GENQUEUE_API_KEYS to choose\)",
    r"  flower     user admin, password \S+  \(generated\)",
    r"  logs       (?P=logs)/\{redis,simulator,worker,api,flower\}\.log",
    r"  env        (?P=data)/env  \(read by genqueue commands run in (?P<cwd>\S+)\)",
    r"try it:",
    r"  curl -s -X POST (?P=api)/v1/tasks -H 'Authorization: Bearer (?P=key)' "
    r"-H 'Content-Type: application/json' -d '\{.+\}'",
    r"  curl -s '(?P=api)/v1/tasks/TASK_ID\?wait=30' -H 'Authorization: Bearer (?P=key)'",
    r"another terminal: set -a; \. (?P=data)/env; set \+a",
    r"Ctrl-C stops everything; --verbose shows every component's output\.",
]
#: A line per finished task, or one for those beyond the few a second shown.
TASK_LINE = (
    r"\d\d:\d\d:\d\d (?:\S+ (?:succeeded|failed|cancelled)(?:: \w+)? \([^)]+\)"
    r"|\.\.\. and \d+ more finished: .+)"
)
#: What Celery, Flower, uvicorn and Python print, none of which ``up`` shows without --verbose.
COMPONENT_NOISE = [
    "celery@", "[tasks]", "[config]", "-------------- ", "SecurityWarning", "superuser",
    "Warm shutdown", "Visit me at", "Registered tasks", "Uvicorn running", "INFO:",
    "Application startup", "simulator listening", "genqueue.webhook",
]  # fmt: skip
LOG_NAMES = ["redis", "simulator", "worker", "api", "flower"]
#: A line each component writes to its log file.
LOG_MARKS = {
    "redis": "Ready to accept connections",
    "simulator": "simulator listening",
    "worker": "[tasks]",
    "api": "Uvicorn running",
    "flower": "Visit me at",
}


def _summary(text: str) -> re.Match[str]:
    """The summary, matched line by line against :data:`SUMMARY`."""
    lines = text.splitlines()[: len(SUMMARY)]
    match = re.fullmatch("\n".join(SUMMARY), "\n".join(lines))
    assert match, "the summary is not as expected:\n" + "\n".join(lines)
    return match


def _after_summary(text: str) -> list[str]:
    return text.splitlines()[len(SUMMARY) :]


def test_genqueue_up_end_to_end(tmp_path: Path) -> None:
    env = _up_env()
    api_port, flower_port = free_port(), free_port()
    log = tmp_path / "up.log"
    process = _start_up(tmp_path, log, env, api_port, flower_port)
    try:
        text = _wait_for_line(log, r"Ctrl-C stops everything", process, 90)
        summary = _summary(text)
        api_key = summary["key"]
        assert summary["data"] == str(tmp_path / ".genqueue")
        assert summary["logs"] == str(tmp_path / ".genqueue" / "logs")
        user, password = re.search(r"flower\s+user (\S+), password (\S+)", text).groups()
        redis_url = _embedded_redis_url(text, tmp_path / ".genqueue")
        curl = re.search(
            r"curl -s -X POST (\S+) -H 'Authorization: Bearer (\S+)' -H '(.+?)' -d '(.+)'", text
        )
        assert curl and curl.group(2) == api_key

        # The printed curl line, as requests.
        response = requests.post(
            curl.group(1),
            data=curl.group(4),
            timeout=10,
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        )
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        status = requests.get(
            f"http://127.0.0.1:{api_port}/v1/tasks/{task_id}?wait=30",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=40,
        ).json()
        assert status["status"] == "succeeded", status
        assert status["result"]["usage"]["completion_tokens"] == 16
        # A line on the terminal says it finished, and how long it took.
        _wait_for_line(log, rf"\n\d\d:\d\d:\d\d {task_id} succeeded \(\d+ ms\)\n", process, 10)

        # The Python client.
        with GenQueueClient(f"http://127.0.0.1:{api_port}", api_key=api_key) as client:
            other = client.submit({"prompt": "Hello", "params": {"max_tokens": 5, "seed": 1}})
            done = client.wait(other, timeout_s=30)
            assert done.result is not None and done.result.usage.completion_tokens == 5

        # A plain Celery client reads the same result by id.
        celery = Celery(broker=redis_url, backend=redis_url, set_as_current=False)
        assert celery.AsyncResult(task_id).get(timeout=10) == status["result"]
        celery.close()

        # Flower lists the task under genqueue.generate, with the printed credentials only.
        flower = f"http://127.0.0.1:{flower_port}"
        assert requests.get(f"{flower}/api/tasks", timeout=10).status_code == 401
        deadline = time.monotonic() + 30
        tasks: dict = {}
        while time.monotonic() < deadline:
            tasks = requests.get(f"{flower}/api/tasks", auth=(user, password), timeout=10).json()
            if tasks.get(task_id, {}).get("state") == "SUCCESS":
                break
            time.sleep(0.5)
        assert tasks[task_id]["name"] == "genqueue.generate"
        assert tasks[task_id]["state"] == "SUCCESS"

        # What up leaves for a second terminal: Redis, the API and its key, the owner's alone.
        env_file = tmp_path / ".genqueue" / "env"
        assert summary["cwd"] == str(tmp_path)
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        assert dotenv_values(env_file) == {
            "REDIS_URL": redis_url,
            "GENQUEUE_API_URL": f"http://127.0.0.1:{api_port}",
            "GENQUEUE_API_KEY": api_key,
            "RUNPOD_ENDPOINT_URL": re.search(r"endpoint   (\S+)", text).group(1),
            "RUNPOD_MAX_CONCURRENCY": "64",
        }
        viewed = subprocess.run(
            [sys.executable, "-m", "genqueue", "status", "--once"],
            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        assert viewed.returncode == 0, viewed.stderr
        assert viewed.stderr.splitlines()[0] == (
            f"genqueue status: Redis redis://***@{redis_url.split('@', 1)[1]} "
            "(from .genqueue/env, written by genqueue up)"
        )

        # The shell producer, with nothing given: one prompt with --wait, a file, and status.
        shell_env = env
        api = f"http://127.0.0.1:{api_port}"
        one = subprocess.run(
            [sys.executable, "-m", "genqueue", "submit", "Hi there", "--max-tokens", "3", "--wait"],
            env=shell_env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert one.returncode == 0, one.stderr
        assert json.loads(one.stdout)["result"]["usage"]["completion_tokens"] == 3
        jsonl = tmp_path / "requests.jsonl"
        jsonl.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(150)))
        many = subprocess.run(
            [sys.executable, "-m", "genqueue", "submit", "--file", str(jsonl), "--api", api],
            env=shell_env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert many.returncode == 0, many.stderr
        ids = many.stdout.split()
        assert len(ids) == 150 and "150/150" in many.stderr
        shown = subprocess.run(
            [sys.executable, "-m", "genqueue", "status", ids[-1], "--wait", "30", "--api", api],
            env=shell_env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert json.loads(shown.stdout)["status"] == "succeeded", shown.stdout + shown.stderr

        children = _descendants(process.pid)
        assert len(children) >= 5  # redis, simulator, worker (+ its process), api, flower
    finally:
        _stop_up(process)
    assert process.returncode == 0, log.read_text()
    time.sleep(0.5)
    assert [pid for pid in children if _alive(pid)] == []
    text = log.read_text()
    after = _after_summary(text)
    # Task lines, the tasks held back from them counted as it stops, and nothing else.
    assert after[-1] == "genqueue up: stopped"
    after.remove("genqueue up: SIGTERM, stopping...")
    assert [line for line in after[:-1] if not re.fullmatch(TASK_LINE, line)] == []
    assert len([line for line in after if re.search(rf" {task_id} succeeded ", line)]) == 1
    assert [noise for noise in COMPONENT_NOISE if noise in text] == []
    _assert_component_logs(tmp_path / ".genqueue" / "logs")
    assert not (tmp_path / ".genqueue" / "env").exists()  # gone with the Redis it names


def _assert_component_logs(logs: Path) -> None:
    """Each component's output is in its log file, readable by its owner only."""
    assert sorted(p.name for p in logs.iterdir()) == sorted(f"{n}.log" for n in LOG_NAMES)
    assert oct(logs.stat().st_mode & 0o777) == "0o700"
    for name in LOG_NAMES:
        path = logs / f"{name}.log"
        assert oct(path.stat().st_mode & 0o777) == "0o600", path
        assert LOG_MARKS[name] in path.read_text(errors="replace"), path


def test_genqueue_up_verbose_shows_every_component(tmp_path: Path) -> None:
    """--verbose: the components' own output on the terminal too, and still in the log files."""
    log = tmp_path / "up.log"
    process = _start_up(tmp_path, log, _up_env(), free_port(), free_port(), "--verbose")
    try:
        _wait_for_line(log, r"Ctrl-C stops everything", process, 90)
        text = _wait_for_line(log, r"Visit me at", process, 10)
        for mark in LOG_MARKS.values():
            if mark != LOG_MARKS["redis"]:  # redis-server writes to its file alone
                assert mark in text
        assert "genqueue.generate" in text and "genqueue up: running" in text
    finally:
        _stop_up(process)
    assert process.returncode == 0, log.read_text()
    assert "Warm shutdown" in log.read_text()
    _assert_component_logs(tmp_path / ".genqueue" / "logs")


def test_genqueue_up_reports_a_component_that_dies(tmp_path: Path) -> None:
    """A dead component is named on the terminal with its exit status and its log's last lines,
    and the rest are stopped."""
    log = tmp_path / "up.log"
    process = _start_up(tmp_path, log, _up_env(), free_port(), free_port())
    try:
        _wait_for_line(log, r"Ctrl-C stops everything", process, 90)
        children = _descendants(process.pid)
        flower = [pid for pid in children if "flower" in _cmdlines({pid})]
        assert len(flower) == 1
        os.kill(flower[0], signal.SIGKILL)
        process.wait(60)
    finally:
        if process.poll() is None:
            _stop_up(process)
    assert process.returncode == 1
    text = log.read_text()
    flower_log = tmp_path / ".genqueue" / "logs" / "flower.log"
    report = text.split("genqueue up: flower was killed by SIGKILL; stopping everything\n", 1)
    assert len(report) == 2, text
    assert report[1].startswith(f"last lines of {flower_log}:\n"), text
    tail = report[1].splitlines()[1:-1]
    assert 1 <= len(tail) <= 20 and all(line.startswith("  | ") for line in tail), text
    assert any("Visit me at" in line for line in tail), text
    assert report[1].splitlines()[-1] == "genqueue up: stopped"
    time.sleep(0.5)
    assert [pid for pid in children if _alive(pid)] == []


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "genqueue",
                "up",
                "--api-port",
                str(port),
                "--flower-port",
                str(free_port()),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"the API port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def _modes(data_dir: Path) -> dict[str, str]:
    """Every path under ``data_dir`` (itself included) and its permission bits, in octal."""
    paths = [data_dir, *data_dir.rglob("*")]
    return {str(path.relative_to(data_dir)): oct(path.stat().st_mode & 0o777) for path in paths}


def _older_data_dir(data_dir: Path) -> None:
    """A data folder as genqueue up left it before its Redis had a password: world-readable."""
    with EmbeddedRedis(data_dir / "redis") as old:
        client = redis.Redis.from_url(old.url)
        client.set("kept", "from before")
        client.close()
    with shelve.open(str(data_dir / "flower.db")):
        pass
    for path in [data_dir, *data_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _cmdlines(pids: set[int]) -> str:
    lines = []
    for pid in pids:
        with contextlib.suppress(OSError):
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return "\n".join(lines)


def _assert_second_up_refused(cwd: Path, data_dir: Path, first_pid: int) -> None:
    """A second up on the same data folder (other ports) stops at once, naming the setting,
    and leaves the first one's logs alone."""
    logs_before = (data_dir / "logs" / "redis.log").read_text()
    second = subprocess.run(
        [sys.executable, "-m", "genqueue", "up", "--api-port", str(free_port()),
         "--flower-port", str(free_port())],
        cwd=cwd, env=_up_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert second.returncode == 1
    assert second.stderr.strip() == (
        f"genqueue up: the data folder {data_dir} is in use by another genqueue up "
        f"(pid {first_pid}); stop that one, or give this one a folder of its own with "
        "GENQUEUE_DATA_DIR=<folder>"
    )
    assert (data_dir / "logs" / "redis.log").read_text() == logs_before
    assert (data_dir / "env").exists()


def test_genqueue_up_redis_is_private_and_kept_across_restarts(tmp_path: Path) -> None:
    """The embedded Redis wants a password that is printed nowhere, its data folder is the
    user's alone (older folders too), and a restart reuses the password and the data."""
    data_dir = tmp_path / ".genqueue"
    _older_data_dir(data_dir)
    env = _up_env()
    for run in range(2):
        log = tmp_path / f"up{run}.log"
        process = _start_up(tmp_path, log, env, free_port(), free_port())
        try:
            text = _wait_for_line(log, r"Ctrl-C stops everything", process, 90)
            password = (data_dir / "redis" / "password").read_text().strip()
            assert len(password) >= 32
            url = _embedded_redis_url(text, data_dir)
            address = url.split("@", 1)[1]
            with pytest.raises(redis.AuthenticationError):
                redis.Redis.from_url(f"redis://{address}").get("kept")
            client = redis.Redis.from_url(url)
            assert client.get("kept") == b"from before"
            client.close()
            api_key = re.search(r"api key    (\S+)", text).group(1)
            assert (data_dir / "api-key").read_text().strip() == api_key
            if run == 0:
                first_password, first_key = password, api_key
                _assert_second_up_refused(tmp_path, data_dir, process.pid)
            else:
                assert password == first_password
                assert api_key == first_key  # the earlier run's tasks are still this key's
            commands = _cmdlines(_descendants(process.pid))
            assert "redis-server" in commands and "celery" in commands
            assert password not in commands
            modes = _modes(data_dir)
            assert {p: m for p, m in modes.items() if m not in ("0o700", "0o600")} == {}
            dirs = {str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_dir()}
            assert all(modes[d] == "0o700" for d in dirs | {"."}), modes
        finally:
            _stop_up(process)
        assert process.returncode == 0, log.read_text()
        # The logs are this run's: rewritten at each start.
        logs = data_dir / "logs"
        assert (logs / "redis.log").read_text().count("Redis is starting") == 1
        assert (logs / "simulator.log").read_text().count("simulator listening") == 1
        for written in [log, *(data_dir / "logs").glob("*.log")]:
            assert password not in written.read_text(errors="replace"), written
