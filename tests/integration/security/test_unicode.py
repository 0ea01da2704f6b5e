"""Strings that are not valid Unicode are refused where they enter, never stored.

JSON's escape ``"\\udfff"`` spells a lone surrogate: Python decodes it to a ``str`` that no UTF-8
encoder accepts, so a task that held one could be stored and then break every read of it
(a 500). The contract refuses it in every string of a request, at any depth, and the batch
upload refuses it in ``custom_id``. The Celery path is covered in
tests/integration/pipeline/test_pipeline.py
(``test_malformed_payload_fails_once_and_worker_lives``).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
import requests
from pydantic import ValidationError

from api_producer.producers.direct import DirectProducer
from tests.integration.api.conftest import queued_messages
from worker.contract import (
    ErrorInfo,
    GenerationRequest,
    GenerationResult,
    TaskStatus,
    Usage,
    unicode_problem,
)
from worker.delivery.records import status_from
from worker.endpoints.serverless import Job, result_from
from worker.errors import InvalidRequest, PermanentEndpointError
from worker.pipeline.payload import parse_payload
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)

BAD = "\udfff"
USER = {"role": "user", "content": "a"}
JSON = {"Content-Type": "application/json"}

#: (where the message says it is, the request): one bad string in each place one can enter.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("prompt", {"prompt": f"hello {BAD}"}),
    ("system", {"prompt": "hi", "system": BAD}),
    ("messages.1.content", {"messages": [USER, {"role": "user", "content": BAD}]}),
    ("messages.0.role", {"messages": [{"role": BAD, "content": "a"}]}),
    ("messages.0: a key", {"messages": [{"role": "user", "content": "a", BAD: "x"}]}),
    ("template", {"prompt": "hi", "template": BAD}),
    ("endpoint", {"prompt": "hi", "endpoint": BAD}),
    ("webhook_url", {"prompt": "hi", "webhook_url": f"https://example.com/{BAD}"}),
    ("deadline", {"prompt": "hi", "deadline": f"2999-01-01T00:00:00Z{BAD}"}),
    ("params.stop", {"prompt": "hi", "params": {"stop": BAD}}),
    ("params.stop.1", {"prompt": "hi", "params": {"stop": ["ok", BAD]}}),
    ("params.grammar_string", {"prompt": "hi", "params": {"grammar_string": BAD}}),
    ("params.sampler_priority.0", {"prompt": "hi", "params": {"sampler_priority": [BAD]}}),
    ("params: a key", {"prompt": "hi", "params": {BAD: 1}}),
    ("metadata.caller", {"prompt": "hi", "metadata": {"caller": BAD}}),
    ("metadata: a key", {"prompt": "hi", "metadata": {BAD: 1}}),
    ("metadata.a.b.0.c", {"prompt": "hi", "metadata": {"a": {"b": [{"c": BAD}]}}}),
    ("metadata.a.b.0: a key", {"prompt": "hi", "metadata": {"a": {"b": [{BAD: "c"}]}}}),
    ("value: a key", {"prompt": "hi", BAD: 1}),
]
IDS = [where for where, _ in CASES]


def _said(where: str) -> str:
    """The start of the refusal's message for ``where``."""
    if where.endswith(": a key"):
        return f"{where.removesuffix(': a key')}: a key is not valid Unicode (a lone surrogate"
    return f"{where}: not valid Unicode (a lone surrogate U+DFFF at character"


def _body(value: Any) -> str:
    # json.dumps escapes the surrogate: the bytes on the wire are ASCII, as a client sends them.
    return json.dumps(value)


def _nothing_stored(client: redis.Redis) -> bool:
    return queued_messages(client) == 0 and not list(client.scan_iter(match="genqueue:*"))


@pytest.mark.parametrize(("where", "raw"), CASES, ids=IDS)
def test_the_contract_refuses_a_lone_surrogate_anywhere(where: str, raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        GenerationRequest.model_validate(raw)
    errors = info.value.errors(include_input=False)
    assert [error["type"] for error in errors] == ["string_unicode"]
    assert errors[0]["msg"].startswith(_said(where))
    assert BAD not in errors[0]["msg"]
    # The worker's reading of a Celery payload: one clear contract error.
    with pytest.raises(InvalidRequest) as refused:
        parse_payload((), {"request": raw})
    assert refused.value.error_type == "invalid_request"
    assert _said(where) in refused.value.message


def test_the_problem_names_the_place_and_code_point() -> None:
    assert unicode_problem({"a": ["ok", "x\ud800"]}) == (
        "a.1: not valid Unicode (a lone surrogate U+D800 at character 1)"
    )
    assert unicode_problem("fine: é, 日本, 🎂 and a pair \U0001f600") is None
    assert unicode_problem({"deep": [[[[{"k": "v"}]]]] * 3, "n": 1, "f": None}) is None
    nested: Any = BAD
    for _ in range(5000):  # deeper than Python's recursion limit: no RecursionError
        nested = [nested]
    assert unicode_problem(nested, "x") == (
        f"x{'.0' * 5000}: not valid Unicode (a lone surrogate U+DFFF at character 0)"
    )


def test_the_direct_producer_refuses_before_redis(redis_url, redis_client) -> None:
    producer = DirectProducer(Settings(redis_url=redis_url))
    try:
        with pytest.raises(ValidationError, match=r"metadata\.k: not valid Unicode"):
            producer.submit(GenerationRequest(prompt="hi", metadata={"k": BAD}))
    finally:
        producer.close()
    assert _nothing_stored(redis_client)


@pytest.mark.parametrize(("where", "raw"), CASES, ids=IDS)
def test_post_tasks_refuses_with_422(api, auth, redis_client, where, raw) -> None:
    headers = {**auth, **JSON}
    one = requests.post(f"{api.url}/v1/tasks", data=_body(raw), headers=headers, timeout=10)
    assert one.status_code == 422, one.text
    assert one.json()["detail"][0]["msg"].startswith(_said(where))
    batch = {"requests": [{"prompt": "fine"}, raw]}
    many = requests.post(
        f"{api.url}/v1/tasks/batch", data=_body(batch), headers=headers, timeout=10
    )
    assert many.status_code == 422, many.text
    assert many.json()["detail"][0]["loc"] == ["body", "requests", 1]
    assert _nothing_stored(redis_client)


@pytest.mark.parametrize(("where", "raw"), CASES, ids=IDS)
def test_batch_upload_refuses_with_422(api, auth, redis_client, where, raw) -> None:
    lines = [{"custom_id": "ok", "prompt": "fine"}, {"custom_id": "bad", **raw}]
    upload = "".join(_body(line) + "\n" for line in lines)
    as_jsonl = requests.post(
        f"{api.url}/v1/batches",
        data=upload,
        headers={**auth, "Content-Type": "application/x-ndjson"},
        timeout=10,
    )
    assert as_jsonl.status_code == 422, as_jsonl.text
    assert as_jsonl.json()["detail"].startswith(f"line 2: {_said(where)}")
    as_json = requests.post(
        f"{api.url}/v1/batches", data=_body({"requests": lines}), headers={**auth, **JSON},
        timeout=10,
    )  # fmt: skip
    assert as_json.status_code == 422, as_json.text
    assert as_json.json()["detail"].startswith(f"request 2: {_said(where)}")
    assert _nothing_stored(redis_client)


@pytest.mark.parametrize("custom_id", [BAD, f"doc-{BAD}-1", "\ud83d"])
def test_batch_upload_refuses_a_custom_id_that_is_not_unicode(
    api, auth, redis_client, custom_id
) -> None:
    upload = _body({"custom_id": custom_id, "prompt": "hi"}) + "\n"
    response = requests.post(
        f"{api.url}/v1/batches",
        data=upload,
        headers={**auth, "Content-Type": "application/x-ndjson"},
        timeout=10,
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("line 1: custom_id: not valid Unicode")
    assert _nothing_stored(redis_client)


def test_a_header_cannot_carry_one(api, auth, redis_client) -> None:
    """HTTP headers are bytes read as Latin-1: a surrogate's bytes are stored and read back."""
    raw_key = BAD.encode("utf-8", "surrogatepass")  # b"\xed\xbf\xbf"
    headers = {**auth, **JSON, "Idempotency-Key": raw_key.decode("latin-1")}
    first, again = (
        requests.post(f"{api.url}/v1/tasks", data='{"prompt": "hi"}', headers=headers, timeout=10)
        for _ in range(2)
    )
    assert first.status_code == again.status_code == 202
    assert first.json()["task_id"] == again.json()["task_id"]
    read = requests.get(f"{api.url}/v1/tasks/{first.json()['task_id']}", headers=auth, timeout=10)
    assert read.status_code == 200 and read.json()["status"] == "queued"


# --------------------------------------------------------------------------- from the endpoint


def test_an_endpoint_answer_with_one_leaves_the_task_readable(
    api, auth, redis_url, simulator, start_worker
) -> None:
    """The endpoint's words come back as JSON too: a lone surrogate in them is replaced (U+FFFD),
    so the failed task's status still reads (it broke every read with a 500)."""
    worker = start_worker(redis_url, simulator.url)
    words = json.dumps({"error": {"message": f"no {BAD} such model"}})
    simulator.script({"status": 400, "body": words, "content_type": "application/json"})
    sent = requests.post(f"{api.url}/v1/tasks", json={"prompt": "hi"}, headers=auth, timeout=10)
    task_id = sent.json()["task_id"]
    read = requests.get(f"{api.url}/v1/tasks/{task_id}?wait=20", headers=auth, timeout=30)
    assert read.status_code == 200, read.text
    assert read.json()["status"] == "failed"
    assert read.json()["error"]["message"].endswith("no \ufffd such model")
    assert worker.process.poll() is None
    assert "Logging error" not in worker.log()


def test_results_and_errors_replace_lone_surrogates() -> None:
    result = GenerationResult(
        text=f"a{BAD}b", finish_reason=BAD, model=f"m{BAD}", usage=Usage(), latency_ms=1
    )
    assert (result.text, result.finish_reason, result.model) == ("a\ufffdb", "\ufffd", "m\ufffd")
    error = ErrorInfo(type="endpoint_rejected", message=f"x{BAD}")
    assert error.message == "x\ufffd"
    status = TaskStatus(task_id="t", status="failed", attempts=1, result=result, error=error)
    assert json.loads(status.model_dump_json())["error"]["message"] == "x\ufffd"
    assert str(PermanentEndpointError(f"endpoint said {BAD}")) == "endpoint said \ufffd"
    # A serverless job's output is JSON read by requests: the same repair.
    job = Job(job_id="j", state="COMPLETED", output=[f"out{BAD}"], error=None)
    assert result_from(job, latency_ms=1).text == "out\ufffd"
    # A record stored with the escape (json.dumps writes "\\udfff") still reads.
    stored = {b"error": json.dumps({"type": "endpoint_rejected", "message": BAD}).encode()}
    read = status_from("t", stored, json.dumps({"status": "FAILURE"}))
    assert read.error == ErrorInfo(type="endpoint_rejected", message="\ufffd")
