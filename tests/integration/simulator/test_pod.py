"""The simulator as a RunPod pod: the REST control API and the unannounced boot and model load
(genqueue.simulator.pod)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from genqueue.simulator import RunningSimulator, SimulatorConfig, serve_in_thread
from tests.integration.simulator.helpers import TIMEOUT, complete, configure, stats

pytestmark = pytest.mark.timeout(30)

KEY = "rpa_account_key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def pod() -> Iterator[RunningSimulator]:
    with serve_in_thread(SimulatorConfig(pod_id="pod123", pod_api_key=KEY)) as running:
        yield running


def control(sim: RunningSimulator, action: str, pod_id: str = "pod123") -> requests.Response:
    url = f"{sim.url}/v1/pods/{pod_id}"
    if action == "state":
        return requests.get(url, headers=AUTH, timeout=TIMEOUT)
    return requests.post(f"{url}/{action}", headers=AUTH, timeout=TIMEOUT)


def test_state_start_and_stop_answer_as_runpods_rest_api(pod: RunningSimulator) -> None:
    state = control(pod, "state")
    assert state.status_code == 200
    assert state.json()["id"] == "pod123"
    assert state.json()["desiredStatus"] == "RUNNING"
    stopped = control(pod, "stop")
    assert stopped.status_code == 200
    assert stopped.json()["desiredStatus"] == "EXITED"
    assert control(pod, "state").json()["desiredStatus"] == "EXITED"
    assert control(pod, "start").json()["desiredStatus"] == "RUNNING"
    counted = stats(pod)
    assert (counted["pod_start_calls"], counted["pod_starts"]) == (1, 1)
    assert (counted["pod_stop_calls"], counted["pod_stops"]) == (1, 1)


def test_control_routes_ask_the_account_key_and_a_known_pod(pod: RunningSimulator) -> None:
    url = f"{pod.url}/v1/pods/pod123"
    assert requests.get(url, timeout=TIMEOUT).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.post(f"{url}/stop", headers=wrong, timeout=TIMEOUT).status_code == 401
    assert control(pod, "state", pod_id="other").status_code == 404
    assert control(pod, "state").json()["desiredStatus"] == "RUNNING"  # nothing changed


def test_a_stopped_pod_answers_502_then_boots_then_loads_its_model(pod: RunningSimulator) -> None:
    assert complete(pod, prompt="a").status_code == 200  # running from the outset
    control(pod, "stop")
    assert complete(pod, prompt="a").status_code == 502
    configure(pod, pod_cold_start_s=0.6, pod_model_load_s=0.6)
    started = time.monotonic()
    control(pod, "start")
    booting = complete(pod, prompt="a")
    assert booting.status_code == 502
    while time.monotonic() - started < 0.7:
        time.sleep(0.05)
    loading = complete(pod, prompt="a")
    assert loading.status_code == 500
    assert loading.headers["content-type"].startswith("text/plain")
    assert loading.text == "Internal Server Error"
    while time.monotonic() - started < 1.3:
        time.sleep(0.05)
    assert complete(pod, prompt="a").status_code == 200


def test_a_noop_start_answers_200_and_changes_nothing(pod: RunningSimulator) -> None:
    control(pod, "stop")
    configure(pod, pod_noop_starts=1)
    first = control(pod, "start")
    assert first.status_code == 200
    assert first.json()["desiredStatus"] == "EXITED"
    assert control(pod, "state").json()["desiredStatus"] == "EXITED"
    assert control(pod, "start").json()["desiredStatus"] == "RUNNING"
    assert stats(pod)["pod_start_calls"] == 2
    assert stats(pod)["pod_starts"] == 1


def test_without_a_pod_id_there_is_no_pod_until_the_config_names_one(
    sim: RunningSimulator,
) -> None:
    assert requests.get(f"{sim.url}/v1/pods/pod123", timeout=TIMEOUT).status_code == 404
    assert complete(sim, prompt="a").status_code == 200
    assert configure(sim, pod_id="pod123").status_code == 200
    state = requests.get(f"{sim.url}/v1/pods/pod123", timeout=TIMEOUT)
    assert state.json()["desiredStatus"] == "RUNNING"
    assert configure(sim, pod_noop_starts=-1).status_code == 400


def test_a_noop_stop_answers_200_and_changes_nothing(pod: RunningSimulator) -> None:
    configure(pod, pod_noop_stops=1)
    assert control(pod, "stop").json()["desiredStatus"] == "RUNNING"
    assert control(pod, "stop").json()["desiredStatus"] == "EXITED"
    assert (stats(pod)["pod_stop_calls"], stats(pod)["pod_stops"]) == (2, 1)
