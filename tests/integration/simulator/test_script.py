"""Scripted answers and the failure rate (genqueue.simulator.script)."""

from __future__ import annotations

import time

import pytest
import requests

from genqueue.simulator import RunningSimulator, SimulatorConfig, serve_in_thread
from tests.integration.simulator.helpers import TIMEOUT, complete, script, stats


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
