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
    cwd: Path, log: Path, env: dict[str, str], api_port: int, flower_port: int
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


def test_genqueue_up_end_to_end(tmp_path: Path) -> None:
    env = _up_env()
    api_port, flower_port = free_port(), free_port()
    log = tmp_path / "up.log"
    process = _start_up(tmp_path, log, env, api_port, flower_port)
    try:
        text = _wait_for_line(log, r"Ctrl-C stops everything", process, 90)
        api_key = re.search(r"api key\s+(\S+)", text).group(1)
        user, password = re.search(r"flower\s+user (\S+), password (\S+)", text).groups()
        redis_url = _embedded_redis_url(text, tmp_path / ".genqueue")
        assert (tmp_path / ".genqueue" / "redis" / "redis.log").exists()
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

        # The shell producer: one prompt with --wait, a JSONL file, and status.
        shell_env = {**env, "GENQUEUE_API_KEYS": api_key}
        api = f"http://127.0.0.1:{api_port}"
        one = subprocess.run(
            [
                sys.executable,
                "-m",
                "genqueue",
                "submit",
                "Hi there",
                "--max-tokens",
                "3",
                "--wait",
                "--api",
                api,
            ],
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
    assert "genqueue up: stopped" in log.read_text()


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
            if run == 0:
                first_password = password
            else:
                assert password == first_password
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
        for written in [log, *(data_dir / "redis").glob("*.log")]:
            assert password not in written.read_text(errors="replace"), written
