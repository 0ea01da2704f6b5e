"""``genqueue check``: against the simulator playing each failure, and a closed port."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests

from genqueue.cli.check import check_endpoint
from genqueue.embedded_redis import free_port
from genqueue.simulator import RunningSimulator, SimulatorConfig, serve_in_thread
from tests.integration.cli.conftest import clean_env, genqueue
from worker.endpoints.config import EndpointSpec
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    with serve_in_thread(SimulatorConfig(api_key="the-right-key")) as running:
        yield running


def _spec(url: str, **fields: object) -> EndpointSpec:
    return EndpointSpec(name="pod", url=url, api_key_env="CHECK_POD_KEY", **fields)  # type: ignore[arg-type]


def test_a_ready_endpoint(sim, monkeypatch) -> None:
    monkeypatch.setenv("CHECK_POD_KEY", "the-right-key")
    verdict = check_endpoint(_spec(f"{sim.url}/v1/completions"), Settings())  # the URL users copy
    assert verdict.ok, verdict
    assert re.fullmatch(r"serves genqueue-simulated-model; 1 token in \d+ ms", verdict.says)
    assert verdict.line().startswith(f"endpoint pod ({sim.url}): ok: serves ")
    body = requests.get(f"{sim.url}/_sim/stats", timeout=5).json()["last_bodies"][-1]
    assert body == {"max_tokens": 1, "prompt": "Hi"}


def test_a_closed_port() -> None:
    port = free_port()
    verdict = check_endpoint(_spec(f"http://127.0.0.1:{port}"), Settings())
    assert not verdict.ok
    assert verdict.says == (
        f"unreachable: connection refused at 127.0.0.1:{port}: is the server running there, "
        "and are the host and port right?"
    )


def test_no_answer_in_time(sim, monkeypatch) -> None:
    monkeypatch.setenv("CHECK_POD_KEY", "the-right-key")
    requests.post(
        f"{sim.url}/_sim/script", json={"actions": [{"action": "hang", "delay_s": 3}]}, timeout=5
    )
    verdict = check_endpoint(_spec(sim.url), Settings(), read_timeout_s=0.5)
    assert verdict.says == f"{sim.url}/v1/completions did not answer within 0.5 s"


def test_a_missing_or_refused_key_names_its_variable(sim, monkeypatch) -> None:
    monkeypatch.delenv("CHECK_POD_KEY", raising=False)
    missing = check_endpoint(_spec(sim.url), Settings())
    assert missing.says == (
        f"401 from {sim.url}/v1/models: the server wants a key, and CHECK_POD_KEY (which "
        "holds it) is unset"
    )
    monkeypatch.setenv("CHECK_POD_KEY", "a-wrong-key-123")
    refused = check_endpoint(_spec(sim.url), Settings())
    assert refused.says == (
        f"401 from {sim.url}/v1/models: the server refused the key in CHECK_POD_KEY"
    )
    assert "a-wrong-key-123" not in refused.line()


def test_no_model_loaded(sim, monkeypatch) -> None:
    monkeypatch.setenv("CHECK_POD_KEY", "the-right-key")
    # text-generation-webui without a model: the completion answers a plain-text 500.
    requests.post(f"{sim.url}/_sim/script", json={"actions": [{"status": 500}]}, timeout=5)
    verdict = check_endpoint(_spec(sim.url), Settings())
    assert not verdict.ok
    assert verdict.says == (
        f"500 (plain text) from {sim.url}/v1/completions: no model loaded? text-generation-webui "
        "answers so without one: load a model in its Model tab, or start it with --model"
    )


def test_a_wrong_path(sim, monkeypatch) -> None:
    monkeypatch.setenv("CHECK_POD_KEY", "the-right-key")
    verdict = check_endpoint(_spec(f"{sim.url}/api/v1/generate"), Settings())
    assert not verdict.ok
    assert verdict.says == (
        f"404 from {sim.url}/api/v1/generate/v1/completions: the URL's path '/api/v1/generate' "
        f"is not the server's: give its base URL, such as {sim.url} (genqueue adds "
        "/v1/completions)"
    )


def test_the_command(sim, tmp_path) -> None:
    # The key in .env, as the worker reads it too.
    (tmp_path / ".env").write_text("RUNPOD_API_KEY=the-right-key\n")
    env = clean_env(RUNPOD_ENDPOINT_URL=f"{sim.url}/v1/completions")
    ready = genqueue(tmp_path, "check", env=env)
    assert ready.returncode == 0, ready.stderr
    assert re.fullmatch(
        rf"endpoint default \({re.escape(sim.url)}\): ok: serves \S+; 1 token in \d+ ms\n",
        ready.stdout,
    )
    port = free_port()
    closed = genqueue(
        tmp_path, "check", env=clean_env(RUNPOD_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    )
    assert closed.returncode == 1
    assert closed.stderr.startswith(f"endpoint default (http://127.0.0.1:{port}): NOT READY: ")
    unknown = genqueue(tmp_path, "check", "nope", env=env)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "genqueue check: no endpoint 'nope' (configured: default)"
