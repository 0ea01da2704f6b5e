"""``genqueue up`` with an endpoints file: the file's endpoints are what it uses and shows, and
no simulator starts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
from dotenv import dotenv_values

from genqueue.embedded_redis import free_port
from genqueue.simulator import SimulatorConfig, serve_in_thread
from tests.e2e.test_up import _start_up, _stop_up, _up_env, _wait_for_line

pytestmark = pytest.mark.timeout(150)


def test_up_uses_and_shows_the_endpoints_file(tmp_path: Path) -> None:
    with serve_in_thread(SimulatorConfig(model="pod-model")) as pod:
        endpoints_file = tmp_path / "endpoints.toml"
        endpoints_file.write_text(
            'default = "big"\n'
            f'[endpoints.big]\nurl = "{pod.url}/v1/completions"\nmax_concurrency = 2\n'
            f'[endpoints.small]\nkind = "vllm"\nurl = "{pod.url}/v1"\n'
        )
        env = {**_up_env(), "GENQUEUE_ENDPOINTS_FILE": str(endpoints_file)}
        api_port = free_port()
        log = tmp_path / "up.log"
        process = _start_up(tmp_path, log, env, api_port, free_port())
        try:
            text = _wait_for_line(log, r"Ctrl-C stops everything", process, 90)
            lines = text.splitlines()
            completions = f"{pod.url}/v1/completions"
            assert [line for line in lines if line.startswith("  endpoint ")] == [
                f"  endpoint   big: {completions} (GENQUEUE_ENDPOINTS_FILE, the default)",
                f"  endpoint   small: {completions} (GENQUEUE_ENDPOINTS_FILE)",
            ]
            assert "  check      2 endpoints ready" in lines
            assert re.search(r"  logs       \S+/\{redis,worker,api,flower\}\.log\n", text)
            assert "simulator" not in text
            assert not (tmp_path / ".genqueue" / "logs" / "simulator.log").exists()
            assert "RUNPOD_ENDPOINT_URL" not in dotenv_values(tmp_path / ".genqueue" / "env")

            key = re.search(r"api key    (\S+)", text).group(1)
            headers = {"Authorization": f"Bearer {key}"}
            api = f"http://127.0.0.1:{api_port}"
            models = requests.get(f"{api}/v1/models", headers=headers, timeout=10).json()
            assert [model["id"] for model in models["data"]] == ["big", "small"]
            accepted = requests.post(
                f"{api}/v1/tasks",
                json={"prompt": "Hi", "params": {"max_tokens": 4}},
                headers=headers,
                timeout=10,
            )
            assert accepted.status_code == 202, accepted.text
            task_id = accepted.json()["task_id"]
            status = requests.get(
                f"{api}/v1/tasks/{task_id}?wait=30", headers=headers, timeout=40
            ).json()
            assert status["status"] == "succeeded", status
            assert status["result"]["server_model"] == "pod-model"
            # Two checks of one token each at start, then the task, all at the file's server.
            assert pod.simulator.stats.completions_ok == 3
        finally:
            _stop_up(process)
        assert process.returncode == 0, log.read_text()
