"""The API key, live config, stats and reset (genqueue.simulator.control, .behaviour)."""

from __future__ import annotations

import time

import pytest
import requests

from genqueue.simulator import RunningSimulator, SimulatorStats
from tests.integration.simulator.helpers import (
    TIMEOUT,
    complete,
    concurrently,
    configure,
    script,
    stats,
)


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
        "pod_start_calls": 0,
        "pod_starts": 0,
        "pod_stop_calls": 0,
        "pod_stops": 0,
    }
    assert complete(sim, prompt="a").status_code == 200  # the scripted 500 is gone
