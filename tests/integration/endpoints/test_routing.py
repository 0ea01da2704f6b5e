"""Several endpoints: routing by name, dedicated workers, fallback, chat mode, RunPod Serverless.

Two simulators and the runpod package's own local development server, configured as named
endpoints in one TOML file, served by real worker processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from api_producer.client import GenQueueClient
from api_producer.producers.direct import DirectProducer
from genqueue.embedded_redis import free_port
from genqueue.simulator import SimulatorConfig, serve_in_thread
from tests.conftest import SimulatorControl
from tests.integration.api.conftest import API_KEY, serve_api
from worker.contract import GenerationRequest
from worker.settings import Settings

pytestmark = pytest.mark.timeout(120)

HANDLER = Path(__file__).with_name("rp_handler.py")
FAST = {"GENQUEUE_RETRY_BASE_DELAY_S": 0.1, "GENQUEUE_RETRY_MAX_DELAY_S": 0.2}


@pytest.fixture
def second_simulator() -> Iterator[SimulatorControl]:
    with serve_in_thread(SimulatorConfig(model="second-model")) as running:
        yield SimulatorControl(running)


@pytest.fixture
def runpod_server(tmp_path: Path) -> Iterator[str]:
    """The runpod package's development server, running the vLLM-shaped handler."""
    port = free_port()
    log = (tmp_path / "runpod.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, str(HANDLER), "--rp_serve_api", "--rp_api_port", str(port),
         "--rp_api_host", "127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"{url}/docs", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.2)
    else:
        process.kill()
        raise RuntimeError((tmp_path / "runpod.log").read_text())
    yield url
    process.kill()
    process.wait()
    log.close()


def endpoints_file(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "endpoints.toml"
    path.write_text(text)
    return {"GENQUEUE_ENDPOINTS_FILE": str(path), "RUNPOD_ENDPOINT_URL": ""}


def send(client, request):
    return client.send_task("genqueue.generate", kwargs={"request": request})


def test_routing_by_name_and_chat_mode(
    tmp_path, redis_url, simulator, second_simulator, start_worker, celery_client
) -> None:
    env = endpoints_file(
        tmp_path,
        f"""
default = "big"
[endpoints.big]
url = "{simulator.url}"
max_concurrency = 4
template = "alpaca"
[endpoints.small]
kind = "openai"
url = "{second_simulator.url}/v1"
chat = true
max_concurrency = 4
""",
    )
    start_worker(redis_url, "", **env)
    on_default = send(celery_client, {"prompt": "Hi", "params": {"max_tokens": 3}}).get(timeout=30)
    assert on_default["endpoint"] == "big" and on_default["model"] == "genqueue-simulated-model"
    # The endpoint's default template applies when the request names none.
    assert simulator.stats()["last_bodies"][-1]["prompt"].endswith("### Response:\n")
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    on_small = send(celery_client, {"messages": chat, "endpoint": "small"}).get(timeout=30)
    assert on_small["endpoint"] == "small" and on_small["model"] == "second-model"
    assert on_small["text"] and on_small["usage"]["completion_tokens"] == 16
    body = second_simulator.stats()["last_bodies"][-1]
    assert body["messages"] == chat and "prompt" not in body
    # A request may ask for chat mode on an endpoint that renders prompts by default.
    send(celery_client, {"prompt": "Yo", "system": "S", "chat": True}).get(timeout=30)
    assert simulator.stats()["last_bodies"][-1]["messages"] == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Yo"},
    ]
    with pytest.raises(Exception, match="unknown endpoint 'nope'"):
        send(celery_client, {"prompt": "x", "endpoint": "nope"}).get(timeout=30)


def test_fallback_when_an_endpoint_is_down(
    tmp_path, redis_url, simulator, start_worker, celery_client
) -> None:
    env = endpoints_file(
        tmp_path,
        f"""
[endpoints.main]
url = "http://127.0.0.1:{free_port()}"
fallbacks = ["spare"]
[endpoints.spare]
url = "{simulator.url}"
""",
    )
    start_worker(redis_url, "", GENQUEUE_RETRY_MAX_ATTEMPTS=2, **FAST, **env)
    value = send(celery_client, {"prompt": "Hi", "endpoint": "main"}).get(timeout=60)
    assert value["endpoint"] == "spare"
    assert value["endpoints_tried"] == ["main", "spare"]
    assert simulator.stats()["calls"] == 1


def test_a_dedicated_worker_serves_only_its_endpoint(
    tmp_path, redis_url, simulator, second_simulator, start_worker, celery_client
) -> None:
    env = endpoints_file(
        tmp_path,
        f"""
[endpoints.fast]
url = "{simulator.url}"
[endpoints.slow]
url = "{second_simulator.url}"
""",
    )
    start_worker(redis_url, "", worker_args=("--endpoint", "slow"), **env)
    # genqueue's producers route by endpoint; a plain Celery producer names the queue.
    producer = DirectProducer(Settings(redis_url=redis_url))
    fast = celery_client.AsyncResult(
        producer.submit(GenerationRequest(prompt="a", endpoint="fast"))
    )
    slow = celery_client.send_task(
        "genqueue.generate",
        kwargs={"request": {"prompt": "b", "endpoint": "slow"}},
        queue="genqueue.slow",
    )
    assert slow.get(timeout=30)["endpoint"] == "slow"
    time.sleep(1)
    assert fast.state == "PENDING" and simulator.stats()["calls"] == 0
    start_worker(redis_url, "", worker_args=("--endpoint", "fast"), **env)
    assert fast.get(timeout=30)["endpoint"] == "fast"
    producer.close()


def test_serverless_job_polled_to_completion_and_one_cancelled(
    tmp_path, redis_url, simulator, start_worker, celery_client
) -> None:
    env = endpoints_file(
        tmp_path,
        f"""
[endpoints.gpu]
kind = "runpod-serverless"
url = "{simulator.url}"
max_concurrency = 4
""",
    )
    start_worker(redis_url, "", **env)
    simulator.configure(latency_s=1.5)
    value = send(celery_client, {"prompt": "Hello there", "params": {"max_tokens": 4}}).get(
        timeout=30
    )
    assert value["endpoint"] == "gpu" and value["usage"]["completion_tokens"] == 4
    assert len(value["text"].split()) == 4 and value["latency_ms"] >= 1000
    assert simulator.stats()["last_bodies"][-1]["input"]["sampling_params"]["max_tokens"] == 4

    simulator.configure(latency_s=60)
    api = serve_api(Settings(redis_url=redis_url, api_keys=API_KEY, **_settings_fields(env)))
    try:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        task_id = requests.post(
            f"{api.url}/v1/tasks", json={"prompt": "long one"}, headers=auth, timeout=10
        ).json()["task_id"]
        deadline = time.monotonic() + 20
        while simulator.stats()["in_flight"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        status = requests.get(f"{api.url}/v1/tasks/{task_id}", headers=auth, timeout=10).json()
        assert status["status"] == "running"
        requests.delete(f"{api.url}/v1/tasks/{task_id}", headers=auth, timeout=15)
        final = requests.get(f"{api.url}/v1/tasks/{task_id}?wait=20", headers=auth, timeout=30)
        assert final.json()["status"] == "cancelled"
        assert simulator.stats()["jobs_cancelled"] == 1
    finally:
        api.stop()


def test_a_serverless_job_that_completes_with_an_error_fails_with_its_message(
    tmp_path, redis_url, simulator, start_worker, celery_client
) -> None:
    """RunPod's vLLM worker reports vLLM's errors in a COMPLETED job's output: the task fails
    with that message, once (RunPod ran the job), not as an unreadable answer."""
    env = endpoints_file(
        tmp_path,
        f"""
[endpoints.gpu]
kind = "runpod-serverless"
url = "{simulator.url}"
""",
    )
    start_worker(redis_url, "", **env)
    for status, message in ((400, "max_tokens must be at least 1"), (500, "engine dead")):
        simulator.script({"status": status, "error": message})
        failed = send(celery_client, {"prompt": "Hello", "params": {"max_tokens": 4}})
        failed.get(timeout=30, propagate=False)
        assert failed.state == "FAILURE"
        assert f"vLLM returned HTTP {status}: {message}" in str(failed.result)
        assert type(failed.result).__name__ == "PermanentEndpointError"
    assert simulator.stats()["calls"] == 2


def _settings_fields(env: dict[str, str]) -> dict[str, object]:
    return {"endpoints_file": Path(env["GENQUEUE_ENDPOINTS_FILE"])}


def test_runpod_development_server(
    tmp_path, redis_url, runpod_server, start_worker, celery_client
) -> None:
    env = endpoints_file(
        tmp_path,
        f"""
[endpoints.queued]
kind = "runpod-serverless"
url = "{runpod_server}"
[endpoints.sync]
kind = "runpod-serverless"
mode = "runsync"
url = "{runpod_server}"
""",
    )
    start_worker(redis_url, "", **env)
    queued = send(
        celery_client, {"prompt": "Hi", "endpoint": "queued", "params": {"max_tokens": 3}}
    )
    sync = send(celery_client, {"prompt": "Yo", "endpoint": "sync", "params": {"max_tokens": 2}})
    assert queued.get(timeout=60)["text"] == "w0 w1 w2"
    assert sync.get(timeout=60)["text"] == "w0 w1"
    # The prompt went through the ChatML template: three words for the handler.
    assert queued.get()["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def test_the_api_refuses_unknown_endpoints(tmp_path, redis_url, simulator) -> None:
    env = endpoints_file(tmp_path, f'[endpoints.only]\nurl = "{simulator.url}"\n')
    api = serve_api(Settings(redis_url=redis_url, api_keys=API_KEY, **_settings_fields(env)))
    try:
        auth = {"Authorization": f"Bearer {API_KEY}"}
        bad = requests.post(
            f"{api.url}/v1/tasks",
            json={"prompt": "x", "endpoint": "other"},
            headers=auth,
            timeout=10,
        )
        assert bad.status_code == 422 and "unknown endpoint 'other'" in bad.text
        good = requests.post(
            f"{api.url}/v1/tasks",
            json={"prompt": "x", "endpoint": "only"},
            headers=auth,
            timeout=10,
        )
        assert good.status_code == 202
    finally:
        api.stop()
    assert os.environ.get("GENQUEUE_ENDPOINTS_FILE") is None


@pytest.mark.timeout(240)
def test_a_mixed_run_over_three_endpoints(
    tmp_path, redis_url, simulator, second_simulator, runpod_server, start_worker
) -> None:
    """Two simulators and runpod's development server as three named endpoints, one run:
    routing by name, chat mode, a serverless job, a 1,000-line batch across all three, then
    fallback once the first simulator is stopped."""
    env = endpoints_file(
        tmp_path,
        f"""
default = "pod"
[endpoints.pod]
url = "{simulator.url}"
max_concurrency = 64
fallbacks = ["vllm"]
[endpoints.vllm]
kind = "openai"
url = "{second_simulator.url}/v1"
max_concurrency = 64
[endpoints.serverless]
kind = "runpod-serverless"
url = "{runpod_server}"
max_concurrency = 8
""",
    )
    start_worker(
        redis_url, "", GENQUEUE_WORKER_CONCURRENCY=200, GENQUEUE_RETRY_MAX_ATTEMPTS=2, **FAST, **env
    )
    api = serve_api(Settings(redis_url=redis_url, api_keys=API_KEY, **_settings_fields(env)))
    client = GenQueueClient(api.url, api_key=API_KEY)
    try:
        by_name = client.wait(client.submit({"prompt": "hi", "endpoint": "vllm"}), timeout_s=30)
        assert by_name.result is not None and by_name.result.endpoint == "vllm"
        chat = client.submit(
            {"messages": [{"role": "user", "content": "hello"}], "endpoint": "vllm", "chat": True}
        )
        assert client.wait(chat, timeout_s=30).result.model == "second-model"
        assert "messages" in second_simulator.stats()["last_bodies"][-1]
        job = client.wait(
            client.submit({"prompt": "q", "endpoint": "serverless", "params": {"max_tokens": 2}}),
            timeout_s=60,
        )
        assert job.result is not None and job.result.text == "w0 w1"

        names = ["pod", "vllm", "serverless"]
        lines = [
            {"custom_id": f"c{i}", "prompt": f"p{i}", "endpoint": names[i % 3],
             "params": {"max_tokens": 3}}
            for i in range(1000)
        ]  # fmt: skip
        batch_id = client.create_batch(lines)["batch_id"]
        deadline = time.monotonic() + 150
        while client.get_batch(batch_id)["status"] != "completed":
            assert time.monotonic() < deadline, client.get_batch(batch_id)
            time.sleep(1)
        outcomes = list(client.batch_results(batch_id))
        assert [o["custom_id"] for o in outcomes] == [f"c{i}" for i in range(1000)]
        assert all(o["status"] == "succeeded" for o in outcomes)
        assert [o["result"]["endpoint"] for o in outcomes] == [names[i % 3] for i in range(1000)]

        simulator.running.stop()  # the pod goes away: its tasks fall back to vllm
        moved = client.wait(client.submit({"prompt": "after the outage"}), timeout_s=60)
        assert moved.result is not None
        assert moved.result.endpoint == "vllm"
        assert moved.result.endpoints_tried == ["pod", "vllm"]
    finally:
        client.close()
        api.stop()


def test_serverless_jobs_outstanding_at_runpod_stay_within_the_cap(
    tmp_path, redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    """``max_concurrency`` caps the jobs submitted and not finished, not only the /run calls."""
    env = endpoints_file(
        tmp_path,
        f"""
[endpoints.gpu]
kind = "runpod-serverless"
url = "{simulator.url}"
max_concurrency = 2
""",
    )
    start_worker(redis_url, "", **env)
    simulator.configure(latency_s=1.0)
    results = [
        send(celery_client, {"prompt": f"job {n}", "params": {"max_tokens": 4}}) for n in range(6)
    ]
    for result in results:
        assert result.get(timeout=60)["usage"]["completion_tokens"] == 4
    assert simulator.stats()["max_in_flight"] == 2
    assert redis_client.zcard("genqueue:lease:gpu") == 0  # every job's slot given back
