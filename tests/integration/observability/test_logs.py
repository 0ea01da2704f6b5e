"""Task log lines: one per state change, JSON objects with GENQUEUE_LOG_FORMAT=json, no prompts."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(90)


def _json_lines(log: str) -> list[dict[str, Any]]:
    lines = []
    for line in log.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))  # every such line parses
    return lines


def _of(lines: list[dict[str, Any]], task_id: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("task_id") == task_id]


def _log_with(worker, text: str, timeout_s: float = 10) -> str:
    """The worker's log once it holds ``text``: a task's result is stored (and seen by
    ``get()``) by its end script, and its ``succeeded`` line is written just after."""
    deadline = time.monotonic() + timeout_s
    log = worker.log()
    while text not in log and time.monotonic() < deadline:
        time.sleep(0.05)
        log = worker.log()
    return log


def _send(celery_client, prompt: str):
    request = {"prompt": prompt, "params": {"max_tokens": 3}}
    return celery_client.send_task("genqueue.generate", kwargs={"request": request})


def test_json_lines_per_state_change(redis_url, simulator, start_worker, celery_client):
    worker = start_worker(redis_url, simulator.url, GENQUEUE_LOG_FORMAT="json")
    prompt = f"secret-prompt-{secrets.token_hex(6)}"
    simulator.script({"status": 503, "retry_after": "0"})
    retried = _send(celery_client, prompt)
    output = retried.get(timeout=30)["text"]
    simulator.script({"status": 400})
    refused = _send(celery_client, prompt)
    with pytest.raises(Exception, match="400"):
        refused.get(timeout=30)

    lines = _json_lines(worker.log())
    events = _of(lines, retried.id)
    assert [line["event"] for line in events] == ["started", "retry", "started", "succeeded"]
    assert [line["attempt"] for line in events] == [1, 1, 2, 2]
    assert [line["outcome"] for line in events] == ["running", "retrying", "running", "succeeded"]
    endpoint = events[0]["endpoint"]
    assert endpoint == "default" and all(line["endpoint"] == endpoint for line in events)
    retry, done = events[1], events[3]
    assert retry["error_type"] == "endpoint_unavailable" and "503" in retry["error"]
    assert isinstance(retry["latency_ms"], int) and retry["retry_in_s"] >= 0
    assert isinstance(done["latency_ms"], int) and done["total_ms"] >= done["latency_ms"]
    assert done["level"] == "INFO" and done["logger"] == "genqueue.task" and done["ts"]

    failed = _of(lines, refused.id)
    assert [line["event"] for line in failed] == ["started", "failed"]
    assert failed[1]["error_type"] == "endpoint_rejected"
    assert failed[1]["outcome"] == "failed" and failed[1]["attempt"] == 1

    # Neither the prompt nor the output appears in any line, JSON or not.
    assert prompt not in worker.log()
    assert output not in "\n".join(json.dumps(line) for line in lines)


def test_text_lines_by_default(redis_url, simulator, start_worker, celery_client):
    worker = start_worker(redis_url, simulator.url)
    result = _send(celery_client, "hello")
    result.get(timeout=30)
    log = _log_with(worker, f"task {result.id} succeeded")
    assert f"task {result.id} started attempt=1 endpoint=" in log
    assert f"task {result.id} succeeded attempt=1 endpoint=" in log
    assert "outcome=succeeded" in log
    assert not [line for line in log.splitlines() if line.startswith("{")]


def test_prompts_only_when_asked(redis_url, simulator, start_worker, celery_client):
    worker = start_worker(
        redis_url, simulator.url, GENQUEUE_LOG_FORMAT="json", GENQUEUE_LOG_PROMPTS="true"
    )
    prompt = f"debug-prompt-{secrets.token_hex(6)}"
    result = _send(celery_client, prompt)
    output = result.get(timeout=30)["text"]
    events = _of(_json_lines(_log_with(worker, '"event": "succeeded"')), result.id)
    assert prompt in events[0]["prompt"]  # the rendered prompt, template included
    assert events[-1]["output"] == output
