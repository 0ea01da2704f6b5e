"""genqueue.cli.supervise: the process supervisor of ``genqueue worker``, with real child
processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genqueue.cli.supervise import CONFIG_ERROR_EXIT, parse_argvs

TIMEOUT_S = 20


def _supervise(argvs: list[list[str]]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "genqueue.cli.supervise", json.dumps(argvs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for(path: Path, lines: int) -> list[str]:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if path.exists() and len(found := path.read_text().splitlines()) >= lines:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{path} never had {lines} lines")


def test_a_child_that_dies_is_started_again_and_sigterm_stops_all(tmp_path):
    starts = tmp_path / "starts"
    # Each start appends a line; the first run exits at once, later runs wait to be stopped.
    child = (
        "import os, signal, sys, time\n"
        f"p = {str(starts)!r}\n"
        "first = not os.path.exists(p)\n"
        "open(p, 'a').write('start\\n')\n"
        "if first: sys.exit(3)\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "time.sleep(60)\n"
    )
    supervisor = _supervise([[sys.executable, "-c", child]])
    try:
        assert _wait_for(starts, 2) == ["start", "start"]
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(TIMEOUT_S) == 0
        assert b"process 0 exited with 3; starting it again" in supervisor.stderr.read()
    finally:
        supervisor.kill()
        supervisor.wait(TIMEOUT_S)


def test_invalid_settings_in_a_child_stop_the_supervisor_with_their_status(tmp_path):
    starts = tmp_path / "starts"
    bad = f"open({str(starts)!r}, 'a').write('x\\n'); raise SystemExit({CONFIG_ERROR_EXIT})"
    supervisor = _supervise([[sys.executable, "-c", bad]])
    try:
        assert supervisor.wait(TIMEOUT_S) == CONFIG_ERROR_EXIT
        assert starts.read_text() == "x\n"  # not started again
    finally:
        supervisor.kill()
        supervisor.wait(TIMEOUT_S)


@pytest.mark.parametrize("text", ["[]", "[[]]", '["python"]', "[[1]]", "{}", "not json"])
def test_anything_but_a_list_of_command_lines_is_refused(text):
    with pytest.raises(ValueError):
        parse_argvs(text)
