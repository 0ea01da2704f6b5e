"""genqueue against llama.cpp's server (llama-cpp-python 0.3.36), a server nobody here wrote,
serving a tiny llama-architecture model with random weights."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.api.conftest import API_KEY, api_factory
from tests.integration.reliability.conftest import wait_for
from tests.real_servers.conftest import REAL_SERVERS, CountingProxy, LlamaServer
from worker import keys

__all__ = ["api_factory"]

pytestmark = REAL_SERVERS

AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: The README's first request.
SEED_REQUEST = {
    "prompt": "How can I make a cake?",
    "system": "You are Dolphin, a helpful AI assistant.",
    "template": "chatml",
    "params": {"max_tokens": 200, "temperature": 0.7, "seed": 10},
    "metadata": {"caller": "billing-service"},
}


def _endpoints(tmp_path: Path, url: str, **fields: Any) -> dict[str, str]:
    lines = [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    path = tmp_path / "endpoints.toml"
    path.write_text(
        f'[endpoints.llama]\nkind = "llamacpp"\nurl = "{url}"\n' + "\n".join(lines) + "\n"
    )
    return {"GENQUEUE_ENDPOINTS_FILE": str(path), "RUNPOD_ENDPOINT_URL": ""}


class Pipeline:
    """The API and a worker in front of one llama.cpp server."""

    def __init__(self, api_url: str, redis_client: Any) -> None:
        self.api_url = api_url
        self.redis = redis_client

    def submit(self, body: dict[str, Any]) -> str:
        answer = requests.post(f"{self.api_url}/v1/tasks", json=body, headers=AUTH, timeout=10)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["task_id"])

    def wait(self, task_id: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            status = requests.get(
                f"{self.api_url}/v1/tasks/{task_id}?wait=10", headers=AUTH, timeout=20
            ).json()
            if status["status"] in ("succeeded", "failed", "cancelled"):
                return dict(status)
            assert time.monotonic() < deadline, status

    def run(self, body: dict[str, Any], timeout_s: float = 60) -> dict[str, Any]:
        return self.wait(self.submit(body), timeout_s)


@pytest.fixture
def pipeline(tmp_path, redis_url, redis_client, api_factory, start_worker):
    def build(url: str, *, worker: dict[str, Any] | None = None, **fields: Any) -> Pipeline:
        env = _endpoints(tmp_path, url, **fields)
        start_worker(redis_url, "", **env, **(worker or {}))
        api = api_factory(
            redis_url, endpoints_file=Path(env["GENQUEUE_ENDPOINTS_FILE"]),
            runpod_endpoint_url=None,
        )  # fmt: skip
        return Pipeline(api.url, redis_client)

    return build


def test_the_seed_request_end_to_end(llama_server: LlamaServer, pipeline) -> None:
    status = pipeline(llama_server.url, model="tiny-llama").run(SEED_REQUEST)
    assert status["status"] == "succeeded", status
    result = status["result"]
    assert result["text"] and result["finish_reason"] in ("length", "stop")
    # The configured name; llama.cpp echoes what was sent (the file's path when nothing was).
    assert result["model"] == result["server_model"] == "tiny-llama"
    assert result["usage"]["prompt_tokens"] > 0
    # The prompt and 200 tokens do not fit in 256: llama.cpp generates up to the context's end.
    usage = result["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] in range(250, 257), usage
    assert status["metadata"] == {"caller": "billing-service"}


def test_no_max_tokens_gets_the_default_not_the_server_s_16(
    llama_server: LlamaServer, pipeline
) -> None:
    flow = pipeline(llama_server.url, worker={"GENQUEUE_DEFAULT_MAX_TOKENS": 40})
    status = flow.run({"prompt": "Hi", "params": {"seed": 3}})
    assert status["result"]["finish_reason"] == "length"
    assert status["result"]["usage"]["completion_tokens"] == 40  # llama.cpp alone: 16
    chat = flow.run({"messages": [{"role": "user", "content": "Hi"}], "chat": True})
    assert chat["result"]["usage"]["completion_tokens"] == 40  # llama.cpp alone: the context


def test_the_same_seed_gives_the_same_text(llama_server: LlamaServer, pipeline) -> None:
    flow = pipeline(llama_server.url)
    body = {"prompt": "Tell me a story.", "params": {"max_tokens": 24, "temperature": 1.0}}
    first = flow.run({**body, "params": {**body["params"], "seed": 7}})["result"]["text"]
    again = flow.run({**body, "params": {**body["params"], "seed": 7}})["result"]["text"]
    other = flow.run({**body, "params": {**body["params"], "seed": 8}})["result"]["text"]
    assert first == again
    assert first != other


def test_a_cap_of_one_under_twenty_tasks(
    llama_server: LlamaServer, counting_proxy: CountingProxy, pipeline
) -> None:
    flow = pipeline(counting_proxy.url, max_concurrency=1)
    ids = [flow.submit({"prompt": f"n{i}", "params": {"max_tokens": 4}}) for i in range(20)]
    statuses = [flow.wait(task_id) for task_id in ids]
    assert [s["status"] for s in statuses] == ["succeeded"] * 20
    assert counting_proxy.arrived == 20
    assert counting_proxy.max_in_flight == 1


def test_a_context_overflow_fails_once_with_the_server_s_message(
    llama_server: LlamaServer, pipeline
) -> None:
    status = pipeline(llama_server.url).run({"prompt": "cake " * 300, "template": "raw"})
    assert status["status"] == "failed"
    assert status["attempts"] == 1
    assert status["error"]["type"] == "endpoint_rejected"
    assert "maximum context length is 256 tokens" in status["error"]["message"]


@pytest.mark.parametrize("top_k", [-1, 2.5])
def test_a_bad_parameter_fails_once_without_opening_the_breaker(
    llama_server: LlamaServer, pipeline, redis_client, top_k: float
) -> None:
    flow = pipeline(llama_server.url, worker={"GENQUEUE_BREAKER_FAILURE_THRESHOLD": 1})
    status = flow.run({"prompt": "Hi", "params": {"top_k": top_k, "max_tokens": 4}})
    assert status["status"] == "failed" and status["attempts"] == 1
    assert status["error"]["type"] == "endpoint_rejected"
    assert "validation error" in status["error"]["message"]
    assert redis_client.hget(keys.breaker("llama"), "failures") is None
    started = time.monotonic()
    assert flow.run({"prompt": "Hi", "params": {"max_tokens": 4}})["status"] == "succeeded"
    assert time.monotonic() - started < 5


def test_completions_and_chat(llama_server: LlamaServer, pipeline) -> None:
    flow = pipeline(llama_server.url)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    chat = flow.run({"messages": messages, "chat": True, "params": {"max_tokens": 8}})
    assert chat["status"] == "succeeded", chat
    assert chat["result"]["text"] and chat["result"]["usage"]["completion_tokens"] == 8
    completion = flow.run({"messages": messages, "params": {"max_tokens": 8}})
    assert completion["status"] == "succeeded", completion
    assert completion["result"]["usage"]["completion_tokens"] == 8
    # No model configured: what the server answered, the model file's path.
    assert completion["result"]["model"].endswith("tiny-random-llama.gguf")
    assert completion["result"]["server_model"] == completion["result"]["model"]


def test_a_server_killed_and_restarted_mid_run(own_llama_server: LlamaServer, pipeline) -> None:
    own_llama_server.start()
    flow = pipeline(own_llama_server.url, worker={"GENQUEUE_RETRY_MAX_ATTEMPTS": 50})
    assert flow.run({"prompt": "warm", "params": {"max_tokens": 4}})["status"] == "succeeded"
    own_llama_server.kill()
    ids = [flow.submit({"prompt": f"n{i}", "params": {"max_tokens": 4}}) for i in range(6)]
    time.sleep(6)  # down long enough for the breaker to open and a few probes to fail
    back = own_llama_server.start()
    statuses = [flow.wait(task_id) for task_id in ids]
    assert [s["status"] for s in statuses] == ["succeeded"] * 6
    done = time.monotonic()
    assert done - back < 5, f"the tasks ran {done - back:.1f}s after the server was back"


def test_a_request_that_crashes_the_server_is_poison(
    own_llama_server: LlamaServer, pipeline, redis_client
) -> None:
    """An invalid grammar crashes llama.cpp's server (SIGSEGV); a supervisor restarts it."""
    own_llama_server.start()
    flow = pipeline(own_llama_server.url, worker={"GENQUEUE_RETRY_MAX_ATTEMPTS": 50})
    stop = False

    def supervise() -> None:
        while not stop:
            if not own_llama_server.alive():
                with contextlib.suppress(RuntimeError):  # it may crash before it answers
                    own_llama_server.start()
            time.sleep(0.1)

    supervisor = threading.Thread(target=supervise, daemon=True)
    supervisor.start()
    try:
        status = flow.run({"prompt": "Hi", "params": {"grammar": "root ::= (", "max_tokens": 4}})
        assert status["status"] == "failed", status
        assert status["error"]["type"] == "poison"
        assert "each of the 2 times this request was sent" in status["error"]["message"]
        wait_for(own_llama_server.alive, 30, "the restarted server")
        assert flow.run({"prompt": "Hi", "params": {"max_tokens": 4}})["status"] == "succeeded"
        # It crashed the server twice (its log says why each time), never a third time.
        assert own_llama_server.log().count("error parsing grammar") == 2
    finally:
        stop = True
        supervisor.join(30)
