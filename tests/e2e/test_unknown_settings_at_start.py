"""A misspelled setting is said at the start of every component, each a real process started
as users start it (the warnings themselves: tests/unit/worker/config/test_unknown_settings.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from genqueue.embedded_redis import free_port
from tests.conftest import ROOT


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No genqueue variable from the outer environment; the current folder, for ``.env``."""
    for name in list(os.environ):
        if name.upper().startswith(("GENQUEUE_", "RUNPOD_", "FLOWER_")) or name == "REDIS_URL":
            monkeypatch.delenv(name)
    return tmp_path


def _taken_port() -> socket.socket:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


#: Each component, started so that it stops soon after reading its settings.
COMPONENTS = {
    "worker": ["-m", "genqueue", "worker", "--endpoint", "nowhere"],
    "api": ["-m", "genqueue", "api", "--host", "0.0.0.0"],  # refused: no keys
    "flower": ["-m", "genqueue", "flower", "--host", "0.0.0.0"],  # refused: no basic auth
    "up": ["-m", "genqueue", "up", "--api-port", "{taken}"],
    "status": ["-m", "genqueue", "status", "some-task", "--api", "http://127.0.0.1:{taken}"],
    "celery -A worker.celery_app": ["-c", "import worker.celery_app"],
    "the API's processes": ["-c", "import api_producer.main as m; m.app_from_environment()"],
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_every_component_says_so_when_it_starts(component: str, clean_env: Path) -> None:
    (clean_env / ".env").write_text("GENQUEUE_RETRY_MAX_ATTEMPS=2\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing there, nothing touched
    with _taken_port() as taken:
        argv = [arg.format(taken=taken.getsockname()[1]) for arg in COMPONENTS[component]]
        result = subprocess.run(
            [sys.executable, *argv],
            cwd=clean_env,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
    said = (
        "GENQUEUE_RETRY_MAX_ATTEMPS is not a genqueue setting and is ignored: did you mean "
        "GENQUEUE_RETRY_MAX_ATTEMPTS?"
    )
    assert said in result.stderr.splitlines(), result.stderr
