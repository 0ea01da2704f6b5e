"""A queued task's place through the API (docs/scheduling.md, "Where a task is in the queue"):
``queue_position`` and ``estimated_start_s`` on ``GET /v1/tasks/{id}`` and ``event: queued`` on
its stream, with a real worker process, a real Redis and the simulator at a cap of 1."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import requests

from tests.integration.api.test_stream import read_events
from tests.integration.scheduling.test_backlog_fairness import wait_for

pytestmark = pytest.mark.timeout(120)

KEY_A, KEY_B = "queue-key-a", "queue-key-b"
BACKLOG = 300


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _submit_many(url: str, key: str, count: int, **extra: Any) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 100):
        body = {
            "requests": [
                {"prompt": f"task {n}", "params": {"max_tokens": 4}, **extra}
                for n in range(start, min(count, start + 100))
            ]
        }
        answer = requests.post(f"{url}/v1/tasks/batch", json=body, headers=_auth(key), timeout=30)
        assert answer.status_code == 202, answer.text
        ids += [task["task_id"] for task in answer.json()["tasks"]]
    return ids


def _status(url: str, key: str, task_id: str) -> dict[str, Any]:
    answer = requests.get(f"{url}/v1/tasks/{task_id}", headers=_auth(key), timeout=10)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


@pytest.fixture
def service(redis_url, simulator, start_worker, api_factory):
    simulator.configure(latency_s=0.4)
    start_worker(
        redis_url, simulator.url, RUNPOD_MAX_CONCURRENCY=1, GENQUEUE_WORKER_CONCURRENCY=8
    )  # fmt: skip
    return api_factory(
        redis_url, api_keys=f"{KEY_A},{KEY_B}", runpod_endpoint_url=simulator.url
    )  # fmt: skip


def test_a_task_behind_a_backlog_is_told_its_fair_turn_and_the_backlog_its_length(
    service,
) -> None:
    backlog = _submit_many(service.url, KEY_A, BACKLOG)
    [late] = _submit_many(service.url, KEY_B, 1)
    # Once sorted, b's task is a turn or two away; a's last has about its whole backlog ahead.
    wait_for(
        lambda: (_status(service.url, KEY_B, late)["queue_position"] or 99) <= 3, 20, "b's turn"
    )
    last = _status(service.url, KEY_A, backlog[-1])
    assert last["status"] == "queued"
    assert BACKLOG - 30 <= last["queue_position"] <= BACKLOG + 1, last
    # b's task runs (no place while it does), then ends with none.
    seen: set[str] = set()

    def ended() -> bool:
        found = _status(service.url, KEY_B, late)
        seen.add(found["status"])
        if found["status"] != "queued":
            assert found["queue_position"] is None and found["estimated_start_s"] is None, found
        return found["status"] == "succeeded"

    wait_for(ended, 30, "b's task to end")
    assert "running" in seen, seen
    # The places fall as tasks run, and the estimate comes from the recent completions.
    wait_for(
        lambda: _status(service.url, KEY_A, backlog[-1])["estimated_start_s"] is not None,
        20,
        "an estimate",
    )
    later = _status(service.url, KEY_A, backlog[-1])
    assert later["queue_position"] < last["queue_position"], (last, later)
    # about 2.5 tasks a second at 0.4 s calls and a cap of 1
    assert later["queue_position"] / 5 <= later["estimated_start_s"] <= later["queue_position"]


def test_the_stream_tells_a_waiting_task_its_place_then_sends_its_tokens(service) -> None:
    _submit_many(service.url, KEY_A, 40)
    [task_id] = _submit_many(service.url, KEY_B, 1, stream=True)
    with requests.get(
        f"{service.url}/v1/tasks/{task_id}/stream", headers=_auth(KEY_B), stream=True, timeout=60
    ) as response:
        assert response.status_code == 200, response.text
        events = read_events(response)
    kinds = [kind for kind, _, _ in events]
    assert kinds[0] == "queued", kinds
    first_token = kinds.index("token")
    assert set(kinds[:first_token]) == {"queued"}, kinds
    assert kinds[-1] == "done" and events[-1][2]["status"] == "succeeded", kinds
    places = [data for kind, _, data in events if kind == "queued"]
    assert all(set(place) == {"queue_position", "estimated_start_s"} for place in places)
    assert all(isinstance(place["queue_position"], int) for place in places), places
    # Sent when it changes: never the same place twice in a row.
    assert all(a != b for a, b in itertools.pairwise(places)), places
