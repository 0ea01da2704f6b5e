"""``RUNPOD_MAX_CONCURRENCY=auto`` with a real worker against the simulator's batching mode: the
limit the workers share rises above its min, stays under the knee's neighbourhood and its max,
and is what ``genqueue status`` and the metrics show."""

from __future__ import annotations

import threading

import pytest

from api_producer.routes.metrics import snapshot_families
from genqueue.cli.status_view import read_view, render
from worker import keys
from worker.endpoints.config import load_endpoints
from worker.limits.auto_limit import AutoBounds, in_force
from worker.observability.snapshot import Snapshot, endpoint_caps
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)

KNEE = 4
HIGH = 16
TASKS = 160


def test_the_auto_limit_finds_the_knee_and_is_reported(
    redis_url, redis_client, simulator, start_worker, celery_client
):
    # 0.25 s a call up to four at once; past that each runs slower, by (n / 4) ** 2.
    simulator.configure(latency_s=0.25, batch_knee=KNEE, batch_slowdown=2.0)
    start_worker(
        redis_url, simulator.url,
        RUNPOD_MAX_CONCURRENCY="auto", GENQUEUE_AUTO_MAX_CONCURRENCY=HIGH,
        GENQUEUE_WORKER_CONCURRENCY=24,
    )  # fmt: skip
    bounds = AutoBounds(1, HIGH)
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:  # the limit in force, as the slot scripts read it
        while not done.wait(0.05):
            seen.append(in_force(redis_client.hget(keys.auto_limit("default"), "limit"), bounds))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    request = {"prompt": "batch", "params": {"max_tokens": 4}}
    results = [
        celery_client.send_task("genqueue.generate", kwargs={"request": request})
        for _ in range(TASKS)
    ]
    try:
        texts = [result.get(timeout=50)["text"] for result in results]
    finally:
        done.set()
        watcher.join()
    assert len(texts) == TASKS

    assert max(seen) > 1, seen  # it rose above the min
    assert max(seen) <= 2 * KNEE, seen  # and backed off past the knee, far under the max
    assert int(redis_client.hget(keys.auto_limit("default"), "windows") or 0) >= 5
    assert simulator.stats()["max_in_flight"] <= 2 * KNEE + 1

    # What genqueue status and /metrics show: the limit in force, from the same hash.
    settings = Settings(
        redis_url=redis_url, runpod_endpoint_url=simulator.url,
        runpod_max_concurrency="auto", auto_max_concurrency=HIGH,
    )  # fmt: skip
    limit = in_force(redis_client.hget(keys.auto_limit("default"), "limit"), bounds)
    text = render(read_view(redis_client, settings))
    assert f"in flight        0 / {limit} (auto, at most {HIGH})  (endpoint default)" in text
    caps = endpoint_caps(load_endpoints(settings))
    pipe = redis_client.pipeline(transaction=False)
    Snapshot.commands(pipe, caps)
    families = snapshot_families(Snapshot.parse(pipe.execute(), caps))
    gauges = {f.name: f.samples[0].value for f in families if f.samples}
    assert gauges["genqueue_endpoint_concurrency_limit"] == limit
    assert gauges["genqueue_endpoint_max_concurrency"] == HIGH
