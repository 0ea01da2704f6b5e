"""Time to first token through genqueue, against the endpoint's own, with an idle queue.

    python -m genqueue.bench.ttft [--tasks 50] [--first-token-s 0.2] [--redis-url URL]

Starts the simulator (streaming: its first piece after ``--first-token-s``, then one every
10 ms), a ``genqueue worker`` process and the API (uvicorn, in this process's threads, on
loopback), Redis embedded unless ``--redis-url``. For each of ``--tasks`` tasks, one at a time:

- the endpoint's own: a streamed POST straight to the simulator, until its first piece;
- through genqueue: ``POST /v1/tasks`` with ``"stream": true``, then
  ``GET /v1/tasks/{id}/stream`` until the first ``event: token``, timed from the submission.

Prints p50, p90 and max of each and of the difference (what genqueue adds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests
import uvicorn

from api_producer.main import create_app
from genqueue.bench.processes import Children, base_env
from genqueue.embedded_redis import EmbeddedRedis, free_port
from genqueue.simulator import SimulatorConfig, serve_in_thread
from worker.settings import Settings

KEY = "ttft-bench-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def endpoint_ttft_s(url: str) -> float:
    body = {"prompt": "Tell me a story", "max_tokens": 16, "stream": True}
    started = time.perf_counter()
    with requests.post(f"{url}/v1/completions", json=body, stream=True, timeout=30) as answer:
        for line in answer.iter_lines(chunk_size=None):
            if line.startswith(b"data: ") and json.loads(line[6:])["choices"][0]["text"]:
                return time.perf_counter() - started
    raise RuntimeError("the endpoint streamed no text")


def genqueue_ttft_s(session: requests.Session, api: str) -> float:
    body = {"prompt": "Tell me a story", "params": {"max_tokens": 16}, "stream": True}
    started = time.perf_counter()
    answer = session.post(f"{api}/v1/tasks", json=body, headers=AUTH, timeout=30)
    task_id = answer.json()["task_id"]
    with session.get(
        f"{api}/v1/tasks/{task_id}/stream", headers=AUTH, stream=True, timeout=30
    ) as events:
        for line in events.iter_lines(chunk_size=None):
            if line == b"event: token":
                first = time.perf_counter() - started
                break
        else:
            raise RuntimeError(f"task {task_id} streamed no token")
        for _ in events.iter_lines(chunk_size=None):
            pass  # to its end, so the next task meets an idle queue
    return first


def _serve_api(settings: Settings) -> str:
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="error")
    threading.Thread(target=uvicorn.Server(config).run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            requests.get(f"{url}/healthz", timeout=1)
            return url
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("the API did not start")


def _worker(children: Children, redis_url: str, endpoint: str) -> None:
    env = {**base_env(), "REDIS_URL": redis_url, "RUNPOD_ENDPOINT_URL": endpoint,
           "GENQUEUE_WORKER_PROCESSES": "1", "RUNPOD_MAX_CONCURRENCY": "4"}  # fmt: skip
    children.spawn_worker(env)


def _summary(name: str, values_s: list[float]) -> str:
    ms = sorted(v * 1000 for v in values_s)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return (
        f"{name:<28} p50 {statistics.median(ms):7.1f} ms   p90 {p90:7.1f} ms   max {ms[-1]:7.1f} ms"
    )


def run(tasks: int, first_token_s: float, redis_url: str, workdir: Path) -> None:
    config = SimulatorConfig(latency_s=first_token_s, token_interval_s=0.01)
    children = Children(workdir)
    with serve_in_thread(config) as simulator:
        try:
            _worker(children, redis_url, simulator.url)
            settings = Settings.model_validate(
                {"redis_url": redis_url, "runpod_endpoint_url": simulator.url, "api_keys": KEY}
            )
            api = _serve_api(settings)
            session = requests.Session()
            genqueue_ttft_s(session, api)  # warm: connections and imports
            own, through = [], []
            for _ in range(tasks):
                own.append(endpoint_ttft_s(simulator.url))
                through.append(genqueue_ttft_s(session, api))
        finally:
            children.stop_all()
    print(f"time to first token, {tasks} tasks one at a time (idle queue)")
    print(_summary("endpoint's own", own))
    print(_summary("through genqueue", through))
    print(_summary("added by genqueue", [t - o for t, o in zip(through, own, strict=True)]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--first-token-s", type=float, default=0.2)
    parser.add_argument("--redis-url", default=None, help="default: an embedded Redis")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="genqueue-ttft-") as tmp:
        if args.redis_url:
            run(args.tasks, args.first_token_s, args.redis_url, Path(tmp))
            return
        with EmbeddedRedis(Path(tmp) / "redis") as redis_server:
            run(args.tasks, args.first_token_s, redis_server.url, Path(tmp))


if __name__ == "__main__":
    main()
