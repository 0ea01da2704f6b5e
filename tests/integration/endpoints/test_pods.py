"""Pods that run when there is work, end to end: real worker processes, a real Redis, and the
simulator playing RunPod's control API and the pod behind it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from genqueue.simulator import SimulatorConfig, serve_in_thread
from tests.conftest import SimulatorControl
from tests.integration.endpoints.test_pod_gate import KEY, POD, pod_call, running, wait_for
from tests.integration.endpoints.test_routing import endpoints_file, send
from worker import keys

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def pod_sim() -> Iterator[SimulatorControl]:
    """A stopped pod that boots for 0.3 s and loads its model for 0.5 s once started."""
    config = SimulatorConfig(pod_id=POD, pod_api_key=KEY, pod_cold_start_s=0.3)
    with serve_in_thread(config) as running_sim:
        sim = SimulatorControl(running_sim)
        pod_call(sim, "stop")
        sim.configure(pod_model_load_s=0.5)
        yield sim


def pod_env(
    tmp_path: Path, sim: SimulatorControl, extra: str = "", **fields: Any
) -> dict[str, str]:
    lines = "\n".join(f"{name} = {value!r}" for name, value in fields.items())
    env = endpoints_file(
        tmp_path,
        f"""
[endpoints.big]
url = "{sim.url}"
max_concurrency = 2
runpod_pod_id = "{POD}"
{lines}
{extra}
""".replace("'", '"').replace("True", "true"),
    )
    return {
        **env,
        "RUNPOD_REST_API_URL": f"{sim.url}/v1",
        "RUNPOD_API_KEY": KEY,
        "GENQUEUE_POD_CHECK_INTERVAL_S": "0.2",
    }


def submit(client: Celery, count: int, **request: Any) -> list[dict[str, Any]]:
    body = {"prompt": "Hi", "params": {"max_tokens": 3}, **request}
    sent = [send(client, body) for _ in range(count)]
    return [result.get(timeout=60) for result in sent]


def test_started_on_demand_then_stopped_when_idle_then_started_again(
    tmp_path: Path, redis_url: str, pod_sim: SimulatorControl, start_worker: Any,
    celery_client: Celery,
) -> None:  # fmt: skip
    worker = start_worker(redis_url, "", **pod_env(tmp_path, pod_sim, idle_stop_after_s=1.5))
    results = submit(celery_client, 6)
    assert [r["endpoint"] for r in results] == ["big"] * 6
    assert pod_sim.stats()["pod_starts"] == 1
    stopped_wait = time.monotonic()
    assert wait_for(lambda: not running(pod_sim), timeout_s=10)
    assert time.monotonic() - stopped_wait >= 1.0  # idle for idle_stop_after_s first
    assert submit(celery_client, 2)[0]["endpoint"] == "big"
    assert pod_sim.stats()["pod_starts"] == 2
    log = worker.log()
    assert " retry " not in log  # the tasks waited for the pod: none was sent to it early
    assert "pod pod1 of endpoint big: start (" in log
    assert "pod pod1 of endpoint big: stop (no call for " in log
    assert KEY not in log


def test_two_workers_racing_start_the_pod_once(
    tmp_path: Path, redis_url: str, pod_sim: SimulatorControl, start_worker: Any,
    celery_client: Celery,
) -> None:  # fmt: skip
    env = pod_env(tmp_path, pod_sim, idle_stop_after_s=60)
    workers = [start_worker(redis_url, "", **env) for _ in range(2)]
    results = submit(celery_client, 12)
    assert len(results) == 12
    assert pod_sim.stats()["pod_start_calls"] == 1
    assert sum(w.log().count("pod pod1 of endpoint big: start (") for w in workers) == 1


def test_a_start_that_never_finishes_falls_back(
    tmp_path: Path, redis_url: str, pod_sim: SimulatorControl, simulator: SimulatorControl,
    start_worker: Any, celery_client: Celery,
) -> None:  # fmt: skip
    pod_sim.configure(pod_model_load_s=3600)
    spare = f'\n[endpoints.spare]\nurl = "{simulator.url}"\n'
    env = pod_env(tmp_path, pod_sim, extra=spare, pod_ready_timeout_s=1.0, fallbacks=["spare"])
    start_worker(redis_url, "", **env)
    results = submit(celery_client, 3)
    assert [r["endpoint"] for r in results] == ["spare"] * 3
    assert results[0]["endpoints_tried"] == ["big", "spare"]
    assert KEY not in json.dumps(results)


def test_a_start_that_never_finishes_fails_the_tasks_saying_so(
    tmp_path: Path, redis_url: str, pod_sim: SimulatorControl, start_worker: Any,
    celery_client: Celery,
) -> None:  # fmt: skip
    pod_sim.configure(pod_model_load_s=3600)
    start_worker(redis_url, "", **pod_env(tmp_path, pod_sim, pod_ready_timeout_s=1.0))
    began = time.monotonic()
    with pytest.raises(Exception, match=r"endpoint big's pod pod1 did not come up") as raised:
        submit(celery_client, 1)
    assert time.monotonic() - began < 20
    assert KEY not in str(raised.value)


def test_a_pod_a_person_started_is_not_stopped(
    tmp_path: Path, redis_url: str, pod_sim: SimulatorControl, start_worker: Any,
    celery_client: Celery,
) -> None:  # fmt: skip
    pod_call(pod_sim, "start")  # a person, from RunPod's console
    worker = start_worker(redis_url, "", **pod_env(tmp_path, pod_sim, idle_stop_after_s=0.5))
    submit(celery_client, 2)
    time.sleep(2.0)
    assert running(pod_sim)
    assert pod_sim.stats()["pod_start_calls"] == 1  # the person's
    assert "a person started it: genqueue stops only pods it started" in worker.log()


def test_a_worker_that_starts_after_genqueue_started_the_pod_stops_it_without_a_task(
    tmp_path: Path, redis_url: str, redis_client: Any, pod_sim: SimulatorControl,
    start_worker: Any,
) -> None:  # fmt: skip
    pod_call(pod_sim, "start")  # started by a genqueue worker that has since gone
    an_hour_ago = int((time.time() - 3600) * 1000)
    redis_client.hset(
        keys.pod("big"),
        mapping={"state": "ready", "by": "genqueue", "ready_at": an_hour_ago,
                 "last_call_at": an_hour_ago},
    )  # fmt: skip
    worker = start_worker(redis_url, "", **pod_env(tmp_path, pod_sim, idle_stop_after_s=60))
    assert wait_for(lambda: not running(pod_sim), timeout_s=10)
    # The decision is logged once the stop call has answered: a moment after the pod stops.
    said = "pod pod1 of endpoint big: stop (no call for 36"
    assert wait_for(lambda: said in worker.log(), timeout_s=10), worker.log()


def test_a_pod_is_not_stopped_under_a_call_longer_than_its_idle_time(
    tmp_path: Path, redis_url: str, pod_sim: SimulatorControl, start_worker: Any,
    celery_client: Celery,
) -> None:  # fmt: skip
    start_worker(redis_url, "", **pod_env(tmp_path, pod_sim, idle_stop_after_s=1.0))
    submit(celery_client, 1)  # the pod is up, and was called just now
    pod_sim.configure(latency_s=4.0)
    stops_before = pod_sim.stats()["pod_stop_calls"]  # the fixture's
    began = time.monotonic()
    (result,) = submit(celery_client, 1)  # a call four times the idle time
    assert time.monotonic() - began >= 4.0
    assert result["endpoint"] == "big"
    assert pod_sim.stats()["pod_stop_calls"] == stops_before
    assert wait_for(lambda: not running(pod_sim), timeout_s=10)  # stopped once idle
