"""A pool (``urls = [...]``) of simulators served by a real worker process: the work spreads over
the replicas within each one's cap, and a replica stopped mid-run loses no task, the others
take the rest."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from genqueue.embedded_redis import free_port
from genqueue.simulator import SimulatorConfig, serve_in_thread
from tests.conftest import SimulatorControl
from tests.integration.endpoints.test_routing import FAST, endpoints_file, send

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def replicas() -> Iterator[list[SimulatorControl]]:
    running = [serve_in_thread(SimulatorConfig(latency_s=0.3)) for _ in range(3)]
    try:
        yield [SimulatorControl(r) for r in running]
    finally:
        for r in running:
            r.stop()


def pool_file(tmp_path: Path, replicas: list[SimulatorControl], cap: int) -> dict[str, str]:
    urls = ", ".join(f'"{r.url}"' for r in replicas)
    return endpoints_file(
        tmp_path, f'[endpoints.pool]\nkind = "llamacpp"\nurls = [{urls}]\nmax_concurrency = {cap}\n'
    )


def test_work_spreads_over_the_replicas_within_each_ones_cap(
    tmp_path, redis_url, replicas, start_worker, celery_client
) -> None:
    start_worker(redis_url, "", **pool_file(tmp_path, replicas, cap=2))
    results = [send(celery_client, {"prompt": f"p{i}"}) for i in range(12)]
    values = [r.get(timeout=25) for r in results]
    assert {v["endpoint"] for v in values} == {"pool"}
    stats = [r.stats() for r in replicas]
    assert sum(s["completions_ok"] for s in stats) == 12
    # Six slots in all, two per replica: each replica ran two at once, never more.
    assert [s["max_in_flight"] for s in stats] == [2, 2, 2]


def test_a_replica_stopped_mid_run_loses_no_task(
    tmp_path, redis_url, replicas, start_worker, celery_client
) -> None:
    start_worker(
        redis_url, "", GENQUEUE_BREAKER_FAILURE_THRESHOLD=2, GENQUEUE_RETRY_MAX_ATTEMPTS=5,
        **FAST, **pool_file(tmp_path, replicas, cap=2),
    )  # fmt: skip
    results = [send(celery_client, {"prompt": f"p{i}"}) for i in range(18)]
    deadline = time.monotonic() + 10
    while replicas[0].stats()["in_flight"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    replicas[0].running.stop()  # its calls in flight are dropped, unanswered
    values = [r.get(timeout=25) for r in results]
    assert len(values) == 18 and {v["endpoint"] for v in values} == {"pool"}
    stopped = replicas[0].running.simulator.stats
    served = [r.stats()["completions_ok"] for r in replicas[1:]]
    assert stopped.completions_ok + sum(served) >= 18
    assert sum(served) >= 18 - stopped.completions_ok
    assert min(served) >= 4  # both others took part of the stopped one's share


def test_a_pool_whose_replicas_are_all_down_falls_back(
    tmp_path, redis_url, replicas, start_worker, celery_client
) -> None:
    dead = ", ".join(f'"http://127.0.0.1:{free_port()}"' for _ in range(2))
    env = endpoints_file(
        tmp_path,
        f'[endpoints.pool]\nurls = [{dead}]\nfallbacks = ["spare"]\n'
        f'[endpoints.spare]\nurl = "{replicas[0].url}"\n',
    )
    start_worker(redis_url, "", GENQUEUE_BREAKER_FAILURE_THRESHOLD=1, **FAST, **env)
    value = send(celery_client, {"prompt": "Hi", "endpoint": "pool"}).get(timeout=25)
    assert value["endpoint"] == "spare" and value["endpoints_tried"] == ["pool", "spare"]
