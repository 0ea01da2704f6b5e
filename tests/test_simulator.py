"""Tests for the fake text-generation-webui endpoint (genqueue.simulator)."""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from genqueue.simulator import (
    RunningSimulator,
    Simulator,
    SimulatorConfig,
    SimulatorStats,
    serve_in_thread,
)

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 5


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    with serve_in_thread(SimulatorConfig()) as running:
        yield running


def complete(sim: RunningSimulator, **body: Any) -> requests.Response:
    return requests.post(f"{sim.url}/v1/completions", json=body, timeout=TIMEOUT)


def script(sim: RunningSimulator, *actions: Any) -> None:
    response = requests.post(f"{sim.url}/_sim/script", json={"actions": list(actions)}, timeout=5)
    assert response.status_code == 200, response.text


def configure(sim: RunningSimulator, **fields: Any) -> requests.Response:
    return requests.post(f"{sim.url}/_sim/config", json=fields, timeout=TIMEOUT)


def stats(sim: RunningSimulator) -> dict[str, Any]:
    response = requests.get(f"{sim.url}/_sim/stats", timeout=TIMEOUT)
    assert response.status_code == 200
    return dict(response.json())


def concurrently(sim: RunningSimulator, count: int) -> list[requests.Response]:
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(complete, sim, prompt=f"p{i}") for i in range(count)]
        return [future.result() for future in futures]


# --------------------------------------------------------------------------- normal answers


def test_completion_shape_and_usage(sim: RunningSimulator) -> None:
    response = complete(sim, prompt="hello there  world", max_tokens=8, seed=7)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    data = response.json()
    assert data["id"].startswith("conv-")
    assert data["object"] == "text_completion"
    assert data["model"] == "genqueue-simulated-model"
    assert abs(data["created"] - time.time()) < 60
    (choice,) = data["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] is None
    assert len(choice["text"].split()) == 8
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}


def test_default_max_tokens_gives_16_words_and_stop(sim: RunningSimulator) -> None:
    data = complete(sim, prompt="", temperature=0.7, top_p=0.9, min_p=0.05).json()
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 1, "completion_tokens": 16, "total_tokens": 17}


def test_text_is_deterministic_for_a_seed(sim: RunningSimulator) -> None:
    def text(seed: int, prompt: str = "Tell me a story") -> str:
        return str(complete(sim, prompt=prompt, seed=seed).json()["choices"][0]["text"])

    assert text(42) == text(42)
    assert text(42) != text(43)
    assert text(42) != text(42, prompt="Another prompt")


def test_stop_string_truncates(sim: RunningSimulator) -> None:
    full = complete(sim, prompt="x", seed=5, max_tokens=10).json()["choices"][0]["text"]
    third_word = full.split()[2]
    data = complete(sim, prompt="x", seed=5, max_tokens=10, stop=[" " + third_word]).json()
    assert data["choices"][0]["text"] == full[: full.index(" " + third_word)]
    assert data["choices"][0]["finish_reason"] == "stop"


def test_chat_completion(sim: RunningSimulator) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    url = f"{sim.url}/v1/chat/completions"
    first = requests.post(url, json={"messages": messages, "seed": 1}, timeout=TIMEOUT).json()
    again = requests.post(url, json={"messages": messages, "seed": 1}, timeout=TIMEOUT).json()
    assert first["object"] == "chat.completion"
    choice = first["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 16
    assert choice["message"] == again["choices"][0]["message"]
    assert first["usage"]["prompt_tokens"] == 3


def test_models_model_info_and_404(sim: RunningSimulator) -> None:
    models = requests.get(f"{sim.url}/v1/models", timeout=TIMEOUT).json()
    assert models == {
        "object": "list",
        "data": [
            {"id": "genqueue-simulated-model", "object": "model", "created": 0, "owned_by": "user"}
        ],
    }
    info = requests.get(f"{sim.url}/v1/internal/model/info", timeout=TIMEOUT).json()
    assert info == {"model_name": "genqueue-simulated-model", "lora_names": []}
    missing = requests.get(f"{sim.url}/v1/nothing", timeout=TIMEOUT)
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    wrong_method = requests.get(f"{sim.url}/v1/completions", timeout=TIMEOUT)
    assert wrong_method.status_code == 405


# --------------------------------------------------------------------------- validation


def test_missing_prompt_is_422_in_fastapi_shape(sim: RunningSimulator) -> None:
    response = complete(sim, max_tokens=5)
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "type": "missing",
                "loc": ["body", "prompt"],
                "msg": "Field required",
                "input": {"max_tokens": 5},
            }
        ]
    }


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        (b"[1, 2]", ["body"]),
        (b"{not json", ["body", 1]),
        (b'{"prompt": "x", "max_tokens": "many"}', ["body", "max_tokens"]),
        (b'{"prompt": 3}', ["body", "prompt"]),
    ],
)
def test_invalid_bodies_are_422(sim: RunningSimulator, data: bytes, loc: list[Any]) -> None:
    response = requests.post(f"{sim.url}/v1/completions", data=data, timeout=TIMEOUT)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc


def test_oversized_body_is_413(sim: RunningSimulator) -> None:
    with socket.create_connection(("127.0.0.1", sim.port), timeout=TIMEOUT) as conn:
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 9000000\r\n\r\n")
        reply = conn.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413 ")


def test_keep_alive_serves_pipelined_requests(sim: RunningSimulator) -> None:
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    closing = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", sim.port), timeout=TIMEOUT) as conn:
        conn.sendall(request + request + closing)
        received = b""
        while chunk := conn.recv(65536):  # the server closes after the third answer
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert received.count(b"Connection: keep-alive\r\n") == 2
    assert received.count(b"Connection: close\r\n") == 1


# --------------------------------------------------------------------------- scripted faults


def test_script_plain_text_500_then_ok(sim: RunningSimulator) -> None:
    script(
        sim, {"status": 500, "body": "Internal Server Error", "content_type": "text/plain"}, "ok"
    )
    failed = complete(sim, prompt="a")
    assert failed.status_code == 500
    assert failed.text == "Internal Server Error"
    assert failed.headers["Content-Type"] == "text/plain"
    assert complete(sim, prompt="a").status_code == 200
    assert complete(sim, prompt="a").status_code == 200  # empty queue: normal
    assert (stats(sim)["calls"], stats(sim)["completions_ok"]) == (3, 2)


def test_script_429_with_retry_after(sim: RunningSimulator) -> None:
    script(sim, {"status": 429, "retry_after": "2"})
    response = complete(sim, prompt="a")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert response.json() == {
        "error": {"message": "Rate limit exceeded", "type": "rate_limit_error", "code": 429}
    }


def test_script_error_bodies(sim: RunningSimulator) -> None:
    script(sim, {"status": 400, "error": "prompt too long"}, {"status": 422}, {"status": 524})
    bad_request = complete(sim, prompt="a")
    assert bad_request.status_code == 400
    assert bad_request.json() == {
        "error": {
            "message": "prompt too long",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    unprocessable = complete(sim, prompt="a")
    assert unprocessable.status_code == 422
    assert unprocessable.json()["detail"][0]["loc"] == ["body", "prompt"]
    timeout = complete(sim, prompt="a")
    assert (timeout.status_code, timeout.text) == (524, "error code: 524")


def test_script_bad_json_and_bad_shape(sim: RunningSimulator) -> None:
    script(sim, "bad_json", "bad_shape")
    bad_json = complete(sim, prompt="a")
    assert bad_json.status_code == 200
    assert bad_json.headers["Content-Type"] == "application/json"
    with pytest.raises(requests.JSONDecodeError):
        bad_json.json()
    assert complete(sim, prompt="a").json() == {"unexpected": True}


def test_script_sized_and_gzipped_bodies(sim: RunningSimulator) -> None:
    size = 2 * 1024 * 1024
    script(
        sim,
        {"size_bytes": size},
        {"size_bytes": size, "gzip": True},
        {"status": 500, "size_bytes": 1000},
    )
    plain = complete(sim, prompt="a", max_tokens=4)
    assert plain.status_code == 200
    assert size - 500 <= len(plain.content) <= size
    assert plain.json()["choices"][0]["text"].endswith("xxx")
    raw = requests.post(
        f"{sim.url}/v1/completions", json={"prompt": "a"}, timeout=TIMEOUT, stream=True
    )
    assert raw.headers["Content-Encoding"] == "gzip"
    assert int(raw.headers["Content-Length"]) < 20_000  # a small download...
    assert len(raw.content) >= size - 500  # ...that inflates to the size asked for
    error = complete(sim, prompt="a")
    assert error.status_code == 500 and error.text == "x" * 1000
    for bad in ({"size_bytes": -1}, {"size_bytes": "big"}, {"gzip": "yes"}):
        response = requests.post(f"{sim.url}/_sim/script", json={"actions": [bad]}, timeout=5)
        assert response.status_code == 400, bad


def test_script_reset_raises_connection_error(sim: RunningSimulator) -> None:
    script(sim, "reset")
    with pytest.raises(requests.ConnectionError):
        complete(sim, prompt="a")
    assert complete(sim, prompt="a").status_code == 200


def test_script_hang_raises_read_timeout(sim: RunningSimulator) -> None:
    script(sim, "hang")
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        requests.post(f"{sim.url}/v1/completions", json={"prompt": "a"}, timeout=(2, 0.5))
    assert time.monotonic() - started < 3
    assert complete(sim, prompt="a").status_code == 200


def test_script_delays(sim: RunningSimulator) -> None:
    script(sim, {"delay_s": 0.3}, {"status": 503, "delay_s": 0.2})
    started = time.monotonic()
    assert complete(sim, prompt="a").status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert complete(sim, prompt="a").status_code == 503
    assert time.monotonic() - started >= 0.2


def test_invalid_script_is_rejected(sim: RunningSimulator) -> None:
    for actions in (["explode"], [{"status": 500, "colour": "red"}], "hang", [{"status": 42}]):
        response = requests.post(f"{sim.url}/_sim/script", json={"actions": actions}, timeout=5)
        assert response.status_code == 400, actions
    assert complete(sim, prompt="a").status_code == 200  # nothing was queued


def test_fail_rate_is_seeded() -> None:
    config = SimulatorConfig(fail_rate=0.5, fail_status=503, retry_after_s=1.5, seed=3)

    def outcomes() -> list[int]:
        with serve_in_thread(config) as running:
            responses = [complete(running, prompt="a") for _ in range(20)]
        retry_afters = {r.headers["Retry-After"] for r in responses if r.status_code == 503}
        assert retry_afters <= {"1.5"}
        return [r.status_code for r in responses]

    first = outcomes()
    assert set(first) == {200, 503}
    assert outcomes() == first


# --------------------------------------------------------------------------- auth, config, stats


def test_api_key_is_required_when_set(sim: RunningSimulator) -> None:
    assert configure(sim, api_key="s3cret").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = requests.post(
            f"{sim.url}/v1/completions", json={"prompt": "a"}, headers=headers, timeout=TIMEOUT
        )
        assert response.status_code == 401
        assert response.json() == {
            "error": {
                "message": "Invalid API key",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
    assert requests.get(f"{sim.url}/v1/models", timeout=TIMEOUT).status_code == 401
    good = requests.post(
        f"{sim.url}/v1/completions",
        json={"prompt": "a"},
        headers={"Authorization": "Bearer s3cret"},
        timeout=TIMEOUT,
    )
    assert good.status_code == 200
    seen = stats(sim)  # /_sim/* needs no key
    assert seen["auth_headers"] == ["Bearer wrong", "Bearer s3cret"]
    assert (seen["calls"], seen["completions_ok"]) == (3, 1)


def test_config_updates_live(sim: RunningSimulator) -> None:
    response = configure(sim, model="other-model", latency_s=0.05)
    assert response.status_code == 200
    assert response.json()["model"] == "other-model"
    assert complete(sim, prompt="a").json()["model"] == "other-model"
    assert sim.simulator.config.latency_s == 0.05
    assert configure(sim, no_such_field=1).status_code == 400
    assert configure(sim, fail_rate=2).status_code == 400
    assert configure(sim, latency_s="slow").status_code == 400


def test_stats_record_bodies_times_and_are_not_counted(sim: RunningSimulator) -> None:
    before = time.time()
    complete(sim, prompt="first", seed=1)
    requests.post(
        f"{sim.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "second"}]},
        timeout=TIMEOUT,
    )
    requests.get(f"{sim.url}/v1/models", timeout=TIMEOUT)
    seen = stats(sim)
    assert seen["calls"] == 2
    assert seen["last_bodies"] == [
        {"prompt": "first", "seed": 1},
        {"messages": [{"role": "user", "content": "second"}]},
    ]
    assert len(seen["call_times"]) == 2
    assert before - 1 <= seen["call_times"][0] <= seen["call_times"][1] <= time.time() + 1
    snapshot = sim.simulator.stats
    assert isinstance(snapshot, SimulatorStats)
    assert (snapshot.calls, snapshot.completions_ok, snapshot.in_flight) == (2, 2, 0)


@pytest.mark.timeout(20)
def test_max_in_flight_with_20_concurrent_requests(sim: RunningSimulator) -> None:
    configure(sim, latency_s=0.3)
    responses = concurrently(sim, 20)
    assert [r.status_code for r in responses] == [200] * 20
    seen = stats(sim)
    assert (seen["calls"], seen["max_in_flight"], seen["in_flight"]) == (20, 20, 0)


@pytest.mark.timeout(20)
def test_one_at_a_time_serializes_generations(sim: RunningSimulator) -> None:
    configure(sim, latency_s=0.2, one_at_a_time=True)
    started = time.monotonic()
    responses = concurrently(sim, 3)
    elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [200] * 3
    assert elapsed >= 0.6
    assert stats(sim)["max_in_flight"] == 3


def test_sim_reset_clears_stats_and_script(sim: RunningSimulator) -> None:
    complete(sim, prompt="a")
    script(sim, {"status": 500})
    response = requests.post(f"{sim.url}/_sim/reset", timeout=TIMEOUT)
    assert response.status_code == 200
    assert stats(sim) == {
        "calls": 0,
        "completions_ok": 0,
        "in_flight": 0,
        "max_in_flight": 0,
        "auth_headers": [],
        "last_bodies": [],
        "call_times": [],
        "jobs_cancelled": 0,
    }
    assert complete(sim, prompt="a").status_code == 200  # the scripted 500 is gone


# --------------------------------------------------------------------------- lifecycle


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
