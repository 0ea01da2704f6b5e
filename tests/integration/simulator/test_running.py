"""Starting and stopping a simulator: in a loop, in a thread, until SIGTERM."""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import socket
import subprocess
import sys

import pytest
import requests

from genqueue.simulator import Simulator, SimulatorConfig, serve_in_thread
from tests.conftest import ROOT
from tests.integration.simulator.helpers import TIMEOUT


def test_start_stop_in_a_loop_and_url() -> None:
    async def scenario() -> int:
        simulator = Simulator(SimulatorConfig())
        port = await simulator.start()
        with pytest.raises(RuntimeError):
            await simulator.start()
        await simulator.stop()
        await simulator.stop()  # idempotent
        return port

    assert asyncio.run(scenario()) > 0
    with serve_in_thread(SimulatorConfig()) as running:
        assert running.url == f"http://127.0.0.1:{running.port}"
    running.stop()  # idempotent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return ""
    return process.stdout.readline()


@pytest.mark.timeout(30)
def test_run_prints_listening_line_and_exits_on_sigterm() -> None:
    port = _free_port()
    code = (
        "from genqueue.simulator import run, SimulatorConfig; "
        f"run('127.0.0.1', {port}, SimulatorConfig())"
    )
    python_path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
    command = [sys.executable, "-c", code]
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert _read_line(process, 10) == f"simulator listening on http://127.0.0.1:{port}\n"
            assert requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=TIMEOUT).ok
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
        finally:
            if process.poll() is None:
                process.kill()
