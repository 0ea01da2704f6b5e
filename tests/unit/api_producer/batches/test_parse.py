"""Reading a batch body, and a task's state as a batch counts it, without Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from api_producer.batches import (
    BatchCounts,
    BatchInvalid,
    BatchRules,
    BatchState,
    UnreadableBody,
    UnsupportedMediaType,
    batch_state,
    check_webhooks,
    parse_batch,
    task_state,
)
from tests.integration.batches.conftest import jsonl, line
from worker.delivery import records
from worker.settings import Settings

RULES = BatchRules(max_requests=100, default_priority=2, templates=frozenset({"chatml", "raw"}))


def parse(body: bytes, content_type: str = "application/x-ndjson", rules: BatchRules = RULES):
    return parse_batch(body, content_type, rules)


@pytest.mark.parametrize(
    "content_type",
    ["application/x-ndjson", "application/jsonl", "application/jsonl; charset=utf-8"],
)
def test_jsonl_in_order_with_custom_ids(content_type: str) -> None:
    parsed = parse(jsonl([line(1), line(2), "", line(3, priority=9)]), content_type)
    assert [item.custom_id for item in parsed] == ["req-1", "req-2", "req-3"]
    assert [item.where for item in parsed] == ["line 1", "line 2", "line 4"]
    assert parsed[0].request.prompt == "question 1"
    # A line without a priority gets the batch default; one that sets it keeps its own.
    assert [item.request.priority for item in parsed] == [2, 2, 9]


def test_json_form() -> None:
    body = json.dumps({"requests": [line(1), line(2)]}).encode()
    parsed = parse(body, "application/json")
    assert [item.custom_id for item in parsed] == ["req-1", "req-2"]
    assert parsed[1].where == "request 2"


@pytest.mark.parametrize(
    ("items", "fragment"),
    [
        ([line(1), line(2, params={"max_tokens": 0})], "line 2: params.max_tokens"),
        ([line(1), "{not json"], "line 2: not JSON"),
        ([line(1), "[1, 2]"], "line 2: a request must be a JSON object"),
        ([{"prompt": "no id"}], "line 1: custom_id: a non-empty string is required"),
        ([line(1, custom_id=7)], "line 1: custom_id: a non-empty string is required"),
        ([line(1, custom_id="x" * 513)], "line 1: custom_id: longer than 512"),
        ([line(1), line(2, custom_id="req-1")], "line 2: custom_id 'req-1' is already on line 1"),
        ([line(1, surprise=1)], "line 1: surprise: Extra inputs are not permitted"),
        ([line(1, prompt=None)], "line 1: Value error, give exactly one of 'prompt'"),
        ([line(1, template="nope")], "line 1: unknown template 'nope'"),
        (
            [line(1, deadline=(datetime.now(UTC) - timedelta(hours=1)).isoformat())],
            "line 1: the deadline is already in the past",
        ),
        ([], "the batch holds no requests"),
        ([line(i) for i in range(101)], "at most 100 requests, this one has more"),
    ],
)
def test_invalid_batches(items: list[object], fragment: str) -> None:
    with pytest.raises(BatchInvalid) as caught:
        parse(jsonl(items))
    assert fragment in str(caught.value)
    assert caught.value.status_code == 422


def test_every_bad_line_is_named_up_to_ten() -> None:
    items = [line(i, params={"max_tokens": 0}) if i % 2 else line(i) for i in range(30)]
    with pytest.raises(BatchInvalid) as caught:
        parse(jsonl(items))
    message = str(caught.value)
    assert message.startswith("line 2: params.max_tokens")
    assert "line 20:" in message and "line 22:" not in message
    assert message.endswith("(and 5 more invalid lines)")
    assert "Input should be greater than or equal to 1" in message


def test_the_input_is_not_echoed() -> None:
    secret = "s3cret-prompt-" * 10
    with pytest.raises(BatchInvalid) as caught:
        parse(jsonl([line(1, prompt=secret, params={"max_tokens": 0, "stream": True})]))
    assert "s3cret" not in str(caught.value)


def test_unsupported_and_unreadable_bodies() -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        parse(jsonl([line(1)]), "text/plain")
    assert caught.value.status_code == 415
    with pytest.raises(UnreadableBody) as unreadable:
        parse(b"\xff\xfe", "application/x-ndjson")
    assert unreadable.value.status_code == 400
    for body in (b"[]", b'{"requests": [], "x": 1}', b'{"requests": {}}', b"{"):
        with pytest.raises(BatchInvalid):
            parse(body, "application/json")


def test_a_line_may_hold_unicode_line_separators() -> None:
    parsed = parse(jsonl([line(1, prompt="a\u2028b\u0085c")]))
    assert parsed[0].request.prompt == "a\u2028b\u0085c"


def meta(status: str) -> bytes:
    return json.dumps({"status": status, "result": None}).encode()


@pytest.mark.parametrize(
    ("record", "raw_meta"),
    [
        ({b"attempts": b"0"}, None),
        ({b"attempts": b"0", b"cancel_requested": b"1"}, None),
        ({b"attempts": b"0", b"cancel_requested": b"1"}, meta("STARTED")),
        ({b"attempts": b"0"}, meta("RECEIVED")),
        ({b"attempts": b"0"}, meta("RETRY")),
        ({b"attempts": b"1", b"job_id": b"job-1"}, meta("RETRY")),
        ({b"job_id": b"j", b"finished_at": b"2030-01-01T00:00:00Z"}, meta("RETRY")),
        ({b"attempts": b"0"}, meta("REVOKED")),
        ({b"attempts": b"0"}, meta("REJECTED")),
        ({}, meta("SUCCESS")),
        ({}, meta("FAILURE")),
    ],
)
def test_task_state_agrees_with_status_from(record: dict, raw_meta: bytes | None) -> None:
    assert task_state(record, raw_meta) is records.status_from("t", record, raw_meta).status


def test_a_forgotten_task_counts_as_failed() -> None:
    assert task_state({}, None).value == "failed"


@pytest.mark.parametrize(
    ("counts", "cancelled", "expected"),
    [
        (BatchCounts(queued=3), False, BatchState.QUEUED),
        (BatchCounts(queued=2, running=1), False, BatchState.RUNNING),
        (BatchCounts(queued=2, succeeded=1), False, BatchState.RUNNING),
        (BatchCounts(succeeded=2, failed=1), False, BatchState.COMPLETED),
        (BatchCounts(cancelled=3), True, BatchState.CANCELLED),
        (BatchCounts(running=1, cancelled=2), True, BatchState.CANCELLED),
    ],
)
def test_batch_state(counts: BatchCounts, cancelled: bool, expected: BatchState) -> None:
    assert batch_state(counts, 3, cancelled) is expected


def test_webhooks_are_checked_per_line() -> None:
    parsed = parse(jsonl([line(1), line(2, webhook_url="https://hooks.example.com/x")]))
    with pytest.raises(BatchInvalid, match="line 2: webhook_url: webhooks are off"):
        check_webhooks(parsed, Settings(redis_url="redis://x"))
    loopback = parse(jsonl([line(1, webhook_url="http://127.0.0.1:9/x")]))
    with pytest.raises(BatchInvalid, match="line 1: webhook_url: "):
        check_webhooks(loopback, Settings(redis_url="redis://x", webhook_secret="s" * 32))
