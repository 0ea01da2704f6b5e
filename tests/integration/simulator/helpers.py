"""Calls on a simulator served in a thread, over HTTP like any client."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from genqueue.simulator import RunningSimulator

TIMEOUT = 5


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
