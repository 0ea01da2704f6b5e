"""The tenants file edited under a running API and worker: a version without keys never opens
the API, a version that does not load changes nothing, and no task fails of either."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import worker_env
from tests.integration.observability.conftest import wait_for
from tests.integration.tenants.conftest import BODY, auth, submit, wait_final, write_tenants
from worker.tenancy.tenants import hash_key

KEY_RED, KEY_OPS = "red-reload-key", "ops-reload-key"
#: Stands for what a tenants file holds that no caller may see (digests, names, limits).
MARK = "private-tenant-limits"
TENANTS = f"""# {MARK}
[tenants.red]
key_hashes = ["{hash_key(KEY_RED)}"]
weight = 2

[tenants.ops]
key_hashes = ["{hash_key(KEY_OPS)}"]
admin = true
"""
BROKEN = {
    "empty": b"",
    "last-key-removed": f"# {MARK}\n[tenants.red]\nweight = 2\n".encode(),
    "half-written": TENANTS.encode()[: TENANTS.index("key_hashes") + 20],
    "not-utf8": f"# {MARK}\n[tenants.red]\nweight = 2\n# \xff\xfe\n".encode("latin-1"),
    "tenants-a-number": f"# {MARK}\ntenants = 5\n".encode(),
}


def _rewrite(path: Path, content: bytes) -> None:
    """Rewritten in place (as ``cat new > tenants.toml``), with a new modification time."""
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    path.write_bytes(content)
    os.utime(path, ns=(stamp, stamp))


def _ask(url: str) -> bool:
    """A request whose key is checked (so the tenants are looked at)."""
    requests.get(f"{url}/v1/usage", timeout=5)
    return True


def _refusals(caplog: pytest.LogCaptureFixture) -> int:
    return sum("tenants file not re-read" in record.getMessage() for record in caplog.records)


@pytest.mark.timeout(150)
def test_no_edit_of_the_tenants_file_opens_the_api_or_fails_a_task(
    api_factory, redis_url, simulator, start_worker, tmp_path, caplog
) -> None:
    path = write_tenants(tmp_path / "tenants.toml", TENANTS)
    worker = start_worker(redis_url, simulator.url, genqueue_tenants_file=path)
    api = api_factory(redis_url, api_keys="", tenants_file=path)
    first = submit(api.url, KEY_RED)
    assert wait_final(api.url, KEY_RED, first)["status"] == "succeeded"
    caplog.set_level(logging.ERROR, logger="genqueue.tenants")
    for name, content in BROKEN.items():
        refused = _refusals(caplog)
        _rewrite(path, content)
        # The API looks once a second: a request with a key to check reads the new version.
        wait_for(
            lambda refused=refused: _ask(api.url) and _refusals(caplog) > refused,
            10, f"the {name} version to be refused",
        )  # fmt: skip
        # No key: still refused everywhere (an API without keys would let it in as an admin).
        assert requests.post(f"{api.url}/v1/tasks", json=BODY, timeout=10).status_code == 401
        assert requests.get(f"{api.url}/v1/tasks/{first}", timeout=10).status_code == 401
        assert requests.delete(f"{api.url}/v1/tasks/{first}", timeout=10).status_code == 401
        assert requests.get(f"{api.url}/v1/usage", timeout=10).status_code == 401
        # The last good version stays: the keys work, and the worker's tasks do not fail.
        assert requests.get(f"{api.url}/v1/usage", headers=auth(KEY_OPS), timeout=10).ok
        task_id = submit(api.url, KEY_RED)
        final = wait_final(api.url, KEY_RED, task_id)
        assert (final["status"], final["error"]) == ("succeeded", None), name
    worker_log = worker.log_path.read_text(errors="replace")
    assert "tenants file not re-read" in worker_log  # the worker read the broken versions too
    text = caplog.text + worker_log
    assert MARK not in text and hash_key(KEY_RED) not in text
    # A good version is taken again: the red key goes, the ops key stays.
    _rewrite(path, TENANTS.replace(f'key_hashes = ["{hash_key(KEY_RED)}"]', "").encode())
    wait_for(
        lambda: requests.post(
            f"{api.url}/v1/tasks", json=BODY, headers=auth(KEY_RED), timeout=10
        ).status_code == 401,
        10, "the red key to be removed",
    )  # fmt: skip
    assert submit(api.url, KEY_OPS)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [["worker"], ["api", "--port", "0"]])
@pytest.mark.parametrize(
    ("setting", "content", "where"),
    [
        ("tenants", f"# {MARK}\ntenants = 5\n".encode(), ":2: tenants: "),
        ("tenants", f"# {MARK}\n[tenants.a]\nweight = \xff\n".encode("latin-1"), ":3: not UTF-8"),
        ("tenants", b"[tenants.internal]\n", ":1: tenants.internal: "),
        ("endpoints", f"# {MARK}\nendpoints = 5\n".encode(), ":2: endpoints: "),
        ("endpoints", f"# {MARK}\n[endpoints.a]\nurl = \xff\n".encode("latin-1"), ":3: not UTF-8"),
    ],
    ids=["tenants-a-number", "not-utf8", "reserved-name", "endpoints-a-number", "endpoints-utf8"],
)
def test_a_broken_config_file_stops_the_start_with_file_line_and_field(
    redis_url, tmp_path, command: list[str], setting: str, content: bytes, where: str
) -> None:
    path = tmp_path / f"{setting}.toml"
    path.write_bytes(content)
    env = worker_env(redis_url, "http://127.0.0.1:9", **{f"genqueue_{setting}_file": path})
    process = subprocess.Popen(
        [sys.executable, "-m", "genqueue", *command], env=env, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=45)
    finally:  # a worker that started after all: its whole group goes
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode != 0
    assert f"{path}{where}" in stderr
    assert "Traceback" not in stderr and MARK not in stderr


@pytest.mark.timeout(90)
def test_a_tenants_file_broken_before_a_workers_first_task_fails_no_task(
    api_factory, redis_url, simulator, start_worker, tmp_path
) -> None:
    """A worker process reads its tenants when it takes its first task (a process started
    again by its supervisor too): a file broken then holds the task back until it loads."""
    path = write_tenants(tmp_path / "tenants.toml", TENANTS)
    worker = start_worker(redis_url, simulator.url, genqueue_tenants_file=path)
    api = api_factory(redis_url, api_keys="", tenants_file=path)
    _rewrite(path, BROKEN["not-utf8"])
    task_id = submit(api.url, KEY_RED)
    wait_for(lambda: "tasks wait" in worker.log_path.read_text(), 20, "the worker to say so")
    _rewrite(path, TENANTS.encode())
    final = wait_final(api.url, KEY_RED, task_id)
    assert (final["status"], final["error"]) == ("succeeded", None)
    assert MARK not in worker.log_path.read_text(errors="replace")
