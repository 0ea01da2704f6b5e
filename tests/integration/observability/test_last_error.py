"""A retrying task's status says why its last attempt failed (``last_error``), in the words its
final ``error`` would use: over HTTP and from ``genqueue status TASK_ID``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
import requests

from tests.conftest import ROOT
from tests.integration.observability.conftest import API_KEY, wait_for
from worker.delivery import records

pytestmark = pytest.mark.timeout(90)

SECRET = "sk-runpod-LAST-ERROR-3c2b1a"
#: The endpoint asks for this long between attempts: the test reads the status meanwhile.
RETRY_AFTER_S = 6


def _status(api_url: str, task_id: str) -> dict[str, Any]:
    response = requests.get(
        f"{api_url}/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def _cli_status(api_url: str, task_id: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQUEUE_", "RUNPOD_"))}
    env.update(GENQUEUE_API_KEYS=API_KEY, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "genqueue", "status", task_id, "--api", api_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_a_retrying_task_shows_its_last_error(
    redis_url: str, simulator: Any, start_worker: Any, api_factory: Any
) -> None:
    start_worker(
        redis_url,
        simulator.url,
        RUNPOD_API_KEY=SECRET,
        GENQUEUE_RETRY_MAX_ATTEMPTS="2",
    )
    api = api_factory(redis_url, runpod_endpoint_url=simulator.url)
    busy = {"status": 503, "retry_after": str(RETRY_AFTER_S)}
    simulator.script(busy, busy)
    response = requests.post(
        f"{api.url}/v1/tasks",
        json={"prompt": "why", "params": {"max_tokens": 3}},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5,
    )
    task_id = response.json()["task_id"]
    assert _status(api.url, task_id)["last_error"] is None  # queued: nothing failed yet

    retrying = wait_for(
        lambda: (found := _status(api.url, task_id))["status"] == "retrying" and found,
        timeout_s=30,
        what="the task to retry",
    )
    from_cli = _cli_status(api.url, task_id)
    final = wait_for(
        lambda: (found := _status(api.url, task_id))["status"] == "failed" and found,
        timeout_s=30,
        what="the task to fail",
    )

    last_error = retrying["last_error"]
    assert retrying["attempts"] == 1 and retrying["error"] is None
    # As docs/reliability.md shows it.
    assert last_error == {
        "type": "endpoint_unavailable",
        "message": "endpoint 'default' answered 503: Service Unavailable",
    }
    # The words the final error uses (the second attempt failed as the first did).
    assert final["error"] == {
        "type": "retries_exhausted",
        "message": f"gave up after 2 attempts: {last_error['message']}",
    }
    assert from_cli["status"] == "retrying" and from_cli["last_error"] == last_error
    # What the error would say of the endpoint: never its key, nor its host and port.
    host_port = simulator.url.removeprefix("http://")
    for said in (json.dumps(retrying), json.dumps(from_cli)):
        assert SECRET not in said and host_port not in said
    assert final["last_error"] is None  # the end says it in `error`


LAST = {"type": "endpoint_unavailable", "message": "endpoint 'default' answered 503"}


@pytest.mark.parametrize(
    ("celery_status", "shown"),
    [
        ("RETRY", LAST),
        ("STARTED", LAST),  # running again after a failed attempt
        ("PENDING", LAST),  # its retry's message waits in the queue
        ("SUCCESS", None),
        ("FAILURE", None),  # the end says it in `error`
        ("REVOKED", None),
    ],
)
def test_the_last_error_is_shown_until_the_task_ends(
    celery_status: str, shown: dict[str, str] | None
) -> None:
    record = {"attempts": "1", "last_error": json.dumps(LAST)}
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    result = {"text": "x", "finish_reason": "stop", "model": "m", "usage": usage, "latency_ms": 1}
    meta = {"status": celery_status, "result": result if celery_status == "SUCCESS" else None}
    status = records.status_from("t1", record, json.dumps(meta))
    assert (status.last_error.model_dump() if status.last_error else None) == shown
    assert records.status_from("t1", {"attempts": "0"}, None).last_error is None
