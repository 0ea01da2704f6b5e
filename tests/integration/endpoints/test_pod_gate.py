"""An endpoint's pod in one process, against a real Redis and the simulator playing RunPod:
the gate that starts it and waits for its model, the idle stop (worker/endpoints/pods)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from genqueue.simulator import SimulatorConfig, serve_in_thread
from tests.conftest import SimulatorControl
from worker import keys
from worker.endpoints.clients import EndpointTarget, build_target
from worker.endpoints.config import EndpointSpec
from worker.endpoints.pods import gate as pod_gate
from worker.endpoints.pods.control import PodControl
from worker.endpoints.pods.gate import READY_CACHE_S
from worker.errors import DeadlineExpired, PodControlError, PodUnavailable
from worker.limits.guard import Claim
from worker.observability.metrics import process_metrics
from worker.resources import build_runtime
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)

KEY = "rpa_secret_account_key"
POD = "pod1"


@pytest.fixture
def pod_sim() -> Iterator[SimulatorControl]:
    with serve_in_thread(SimulatorConfig(pod_id=POD, pod_api_key=KEY)) as running:
        sim = SimulatorControl(running)
        pod_call(sim, "stop")
        requests.post(f"{sim.url}/_sim/reset", timeout=5).raise_for_status()
        yield sim


def pod_call(sim: SimulatorControl, action: str) -> dict[str, Any]:
    url = f"{sim.url}/v1/pods/{POD}" + ("" if action == "state" else f"/{action}")
    auth = {"Authorization": f"Bearer {KEY}"}
    call = requests.get if action == "state" else requests.post
    response = call(url, headers=auth, timeout=5)
    response.raise_for_status()
    return dict(response.json())


Targets = Callable[..., EndpointTarget]


@pytest.fixture
def targets(redis_url: str, pod_sim: SimulatorControl) -> Iterator[Targets]:
    """``targets(decisions=[], **spec_fields)``: the endpoint ``big`` on the pod, as one worker
    process builds it (its idle stop's thread looks every 0.2 s)."""
    built: list[EndpointTarget] = []
    clients: list[redis.Redis] = []

    def build(decisions: list[str] | None = None, **fields: Any) -> EndpointTarget:
        settings = Settings(
            redis_url=redis_url,
            runpod_rest_api_url=f"{pod_sim.url}/v1",
            runpod_api_key=KEY,
            pod_check_interval_s=0.2,
        )
        spec = EndpointSpec(name="big", url=pod_sim.url, runpod_pod_id=POD, **fields)
        client = redis.Redis.from_url(redis_url)
        clients.append(client)
        seen = decisions if decisions is not None else []
        target = build_target(
            spec, settings, client, 8, 30.0, on_decision=lambda d, _r: seen.append(d)
        )
        built.append(target)
        return target

    yield build
    for target in built:
        target.close()
    for client in clients:
        client.close()


def state(redis_client: redis.Redis) -> dict[str, str]:
    raw = redis_client.hgetall(keys.pod("big"))
    return {k.decode(): v.decode() for k, v in raw.items()}


def test_a_stopped_pod_is_started_and_its_model_waited_for(
    targets: Targets, pod_sim: SimulatorControl, redis_client: redis.Redis
) -> None:
    pod_sim.configure(pod_cold_start_s=0.4, pod_model_load_s=0.6)
    decisions: list[str] = []
    target = targets(decisions)
    assert target.pod is not None
    assert target.guard.gate is target.pod
    assert not target.pod.is_open()
    claim = Claim("task-1", "claim-1", 30_000, "big")
    assert target.guard.offer(claim) is None  # no slot in passing while the pod is down
    began = time.monotonic()
    target.pod.wait(None)
    assert time.monotonic() - began >= 1.0  # the boot and the model load, unannounced
    assert pod_call(pod_sim, "state")["desiredStatus"] == "RUNNING"
    assert pod_sim.stats()["pod_starts"] == 1
    assert state(redis_client)["state"] == "ready"
    assert state(redis_client)["by"] == "genqueue"
    assert decisions == ["start", "ready"]
    assert target.pod.is_open()
    assert target.guard.offer(claim) is not None
    began = time.monotonic()
    target.pod.wait(None)  # ready: no wait, no call
    assert time.monotonic() - began < 0.2
    assert pod_sim.stats()["pod_start_calls"] == 1


def test_a_start_that_answers_200_and_changes_nothing_is_asked_again(
    targets: Targets, pod_sim: SimulatorControl
) -> None:
    pod_sim.configure(pod_noop_starts=2)
    decisions: list[str] = []
    targets(decisions).pod.wait(None)  # type: ignore[union-attr]
    assert pod_sim.stats()["pod_start_calls"] == 3
    assert pod_sim.stats()["pod_starts"] == 1
    assert decisions == ["start", "start_again", "start_again", "ready"]


def test_a_pod_that_stays_stopped_after_five_starts_fails_its_tasks(
    targets: Targets, pod_sim: SimulatorControl
) -> None:
    pod_sim.configure(pod_noop_starts=100)
    decisions: list[str] = []
    gate = targets(decisions).pod
    assert gate is not None
    with pytest.raises(PodUnavailable, match="5 starts were accepted and the pod stayed EXITED"):
        gate.wait(None)
    assert pod_sim.stats()["pod_start_calls"] == 5
    assert decisions == ["start", *["start_again"] * 4, "start_failed"]


def test_a_pod_that_never_comes_up_fails_its_tasks_saying_so(
    targets: Targets, pod_sim: SimulatorControl, redis_client: redis.Redis
) -> None:
    pod_sim.configure(pod_model_load_s=3600)
    decisions: list[str] = []
    gate = targets(decisions, pod_ready_timeout_s=1.0).pod
    assert gate is not None
    began = time.monotonic()
    with pytest.raises(PodUnavailable) as raised:
        gate.wait(None)
    assert 1.0 <= time.monotonic() - began < 5.0
    message = raised.value.message
    assert message.startswith("endpoint big's pod pod1 did not come up: ")
    assert "did not answer within 1s" in message
    assert raised.value.error_type == "pod_unavailable"
    assert KEY not in message
    assert state(redis_client)["state"] == "failed"
    assert decisions == ["start", "start_failed"]
    began = time.monotonic()
    with pytest.raises(PodUnavailable):  # the tasks that come next fail at once
        gate.wait(None)
    assert time.monotonic() - began < 0.5
    assert pod_sim.stats()["pod_start_calls"] == 1


def test_after_a_failed_start_is_held_a_task_tries_a_start_again(
    targets: Targets, pod_sim: SimulatorControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pod_gate, "FAILED_HOLD_S", 0.5)
    pod_sim.configure(pod_noop_starts=5)
    gate = targets().pod
    assert gate is not None
    with pytest.raises(PodUnavailable):
        gate.wait(None)
    time.sleep(0.6)
    gate.wait(None)  # the hold is over: started again, and this time it runs
    assert pod_sim.stats()["pod_starts"] == 1


def test_a_waiting_task_keeps_its_deadline(targets: Targets, pod_sim: SimulatorControl) -> None:
    pod_sim.configure(pod_model_load_s=3600)
    gate = targets().pod
    assert gate is not None
    began = time.monotonic()
    with pytest.raises(DeadlineExpired, match="passed while the endpoint's pod started"):
        gate.wait(datetime.now(UTC) + timedelta(seconds=0.5))
    assert time.monotonic() - began < 2.0


def test_workers_racing_to_start_the_pod_start_it_once(
    targets: Targets, pod_sim: SimulatorControl
) -> None:
    pod_sim.configure(pod_cold_start_s=0.3, pod_model_load_s=0.3)
    gates = [targets().pod for _ in range(4)]  # four worker processes' gates
    errors: list[BaseException] = []

    def wait(gate: Any) -> None:
        try:
            gate.wait(None)
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=wait, args=(gate,)) for gate in gates for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == []
    assert pod_sim.stats()["pod_start_calls"] == 1
    assert pod_sim.stats()["pod_starts"] == 1


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def running(sim: SimulatorControl) -> bool:
    return pod_call(sim, "state")["desiredStatus"] == "RUNNING"


def test_an_idle_pod_genqueue_started_is_stopped(
    targets: Targets, pod_sim: SimulatorControl, redis_client: redis.Redis
) -> None:
    decisions: list[str] = []
    targets(decisions, idle_stop_after_s=0.6).pod.wait(None)  # type: ignore[union-attr]
    ready_at = time.monotonic()
    assert wait_for(lambda: not running(pod_sim))
    assert time.monotonic() - ready_at >= 0.6 - 0.3  # from ready, seen up to a poll late
    assert state(redis_client)["state"] == "stopped"
    assert decisions[-1] == "stop"
    assert pod_sim.stats()["pod_stops"] == 1
    running_s, idle_s = (float(state(redis_client)[f]) for f in ("running_s", "idle_s"))
    assert running_s >= idle_s > 0.2


@pytest.mark.parametrize("work", ["in_flight", "queued", "admitting", "at_gate"])
def test_a_pod_with_work_is_not_stopped(
    targets: Targets, pod_sim: SimulatorControl, redis_client: redis.Redis, work: str
) -> None:
    targets(idle_stop_after_s=0.4).pod.wait(None)  # type: ignore[union-attr]
    if work == "in_flight":
        key = keys.lease("big")
        redis_client.zadd(key, {"call": int(time.time() * 1000) + 60_000})
    elif work == "queued":
        key = keys.queue_for("big")
        redis_client.rpush(key, "a task")
    elif work == "admitting":
        key = keys.admission("big")
        redis_client.zadd(key, {"waiter": 1})
    else:
        key = keys.pod_waiters("big")
        redis_client.zadd(key, {"waiter": int(time.time() * 1000)})
    time.sleep(1.5)
    assert running(pod_sim)
    redis_client.delete(key)
    assert wait_for(lambda: not running(pod_sim))


def test_a_pod_a_person_started_is_left_running(
    targets: Targets, pod_sim: SimulatorControl, redis_client: redis.Redis
) -> None:
    pod_call(pod_sim, "start")  # from RunPod's console
    decisions: list[str] = []
    targets(decisions, idle_stop_after_s=0.3).pod.wait(None)  # type: ignore[union-attr]
    assert state(redis_client)["by"] == "other"
    assert pod_sim.stats()["pod_start_calls"] == 1  # genqueue started nothing
    time.sleep(1.2)
    assert running(pod_sim)
    assert decisions == ["ready", "keep"]


def test_told_so_genqueue_stops_a_pod_a_person_started(
    targets: Targets, pod_sim: SimulatorControl
) -> None:
    pod_call(pod_sim, "start")
    target = targets(idle_stop_after_s=0.3, stop_pods_started_by_others=True)
    target.pod.wait(None)  # type: ignore[union-attr]
    assert wait_for(lambda: not running(pod_sim))


def test_a_workers_pod_decisions_are_counted_in_its_metrics(
    tmp_path: Path, redis_url: str, pod_sim: SimulatorControl
) -> None:
    endpoints = tmp_path / "endpoints.toml"
    endpoints.write_text(f'[endpoints.big]\nurl = "{pod_sim.url}"\nrunpod_pod_id = "{POD}"\n')
    settings = Settings(
        redis_url=redis_url,
        endpoints_file=endpoints,
        runpod_rest_api_url=f"{pod_sim.url}/v1",
        runpod_api_key=KEY,
    )
    runtime = build_runtime(settings)
    try:
        runtime.targets["big"].pod.wait(None)  # type: ignore[union-attr]
    finally:
        runtime.close()
    registry = process_metrics().registry
    labels = {"endpoint": "big", "decision": "start"}
    assert registry.get_sample_value("genqueue_worker_pod_decisions_total", labels) == 1.0
    labels["decision"] = "ready"
    assert registry.get_sample_value("genqueue_worker_pod_decisions_total", labels) == 1.0


def test_a_refused_control_call_says_so_without_the_key(pod_sim: SimulatorControl) -> None:
    control = PodControl(f"{pod_sim.url}/v1", POD, "rpa_wrong_key_123")
    with pytest.raises(PodControlError) as raised:
        control.status()
    assert raised.value.message == "pod pod1: GET /pods/{podId} answered 401"
    control.close()
    unreachable = PodControl("http://127.0.0.1:9/v1", POD, KEY)
    with pytest.raises(PodControlError) as raised:
        unreachable.start()
    assert raised.value.message == "pod pod1: POST /pods/{podId}/start failed: ConnectionError"
    assert KEY not in raised.value.message
    unreachable.close()


def test_a_pod_stopped_outside_genqueue_is_noticed_and_started_again(
    targets: Targets, pod_sim: SimulatorControl, redis_client: redis.Redis
) -> None:
    decisions: list[str] = []
    gate = targets(decisions).pod  # its idle stop looks every 0.2 s: RunPod is asked every 1.2 s
    assert gate is not None
    gate.wait(None)
    pod_call(pod_sim, "stop")  # a person, from RunPod's console
    assert wait_for(lambda: state(redis_client)["state"] == "stopped", timeout_s=5)
    assert "stopped_outside" in decisions
    time.sleep(READY_CACHE_S)
    gate.wait(None)  # the next task starts it again
    assert running(pod_sim)
    assert pod_sim.stats()["pod_starts"] == 2


def test_a_stop_that_changes_nothing_leaves_the_pod_ready_saying_so(
    targets: Targets, pod_sim: SimulatorControl, redis_client: redis.Redis
) -> None:
    decisions: list[str] = []
    pod_sim.configure(pod_noop_stops=1000)
    targets(decisions, idle_stop_after_s=1.0).pod.wait(None)  # type: ignore[union-attr]
    assert wait_for(lambda: "stop_failed" in decisions, timeout_s=5)
    assert pod_sim.stats()["pod_stop_calls"] == 5
    assert running(pod_sim)
    assert state(redis_client)["state"] == "ready"  # still served
    time.sleep(0.5)
    assert pod_sim.stats()["pod_stop_calls"] == 5  # asked again after idle_stop_after_s only
