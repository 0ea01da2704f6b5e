"""tokens_per_day: a submission holds its estimate; past the budget it is refused whole (429,
quota_exceeded) before anything is enqueued; the budget resets with the UTC day; each task's end
settles what it held."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
import requests

from api_producer.quota import DAY_S, seconds_to_midnight
from tests.integration.api.conftest import queued_messages
from tests.integration.tenants.conftest import auth, wait_final, write_tenants
from worker import keys
from worker.tenancy.tenants import hash_key

KEY = "metered-key"
TENANTS = f'[tenants.metered]\nkey_hashes = ["{hash_key(KEY)}"]\ntokens_per_day = 100\n'
#: "abcd" is one token by the estimate (four characters a token), plus max_tokens.
BODY_41 = {"prompt": "abcd", "template": "raw", "params": {"max_tokens": 40}}
BODY_9 = {"prompt": "abcd", "template": "raw", "params": {"max_tokens": 8}}


def _post(url: str, body: dict, path: str = "/v1/tasks") -> requests.Response:
    return requests.post(f"{url}{path}", json=body, headers=auth(KEY), timeout=10)


@pytest.mark.timeout(120)
def test_the_day_budget_refuses_at_the_boundary_resets_and_settles(
    api_factory, redis_url, redis_client, simulator, start_worker, tmp_path
) -> None:
    tenants_file = write_tenants(tmp_path / "tenants.toml", TENANTS)
    api = api_factory(redis_url, api_keys="", tenants_file=tenants_file)
    first = [_post(api.url, BODY_41) for _ in range(2)]
    assert [answer.status_code for answer in first] == [202, 202]  # 82 held
    ids = [answer.json()["task_id"] for answer in first]

    refused = _post(api.url, BODY_41)
    assert refused.status_code == 429
    assert refused.json()["type"] == "quota_exceeded"
    expected = seconds_to_midnight(time.time())
    assert abs(int(refused.headers["Retry-After"]) - expected) <= 2
    # Nine tokens a line: 82 + 18 passes nothing, 82 + 27 passes the budget. Checked whole.
    too_many = _post(api.url, {"requests": [BODY_9] * 3}, "/v1/tasks/batch")
    assert too_many.status_code == 429
    lines = "".join(json.dumps({**BODY_9, "custom_id": f"c{i}"}) + "\n" for i in range(3))
    upload = requests.post(
        f"{api.url}/v1/batches", data=lines, timeout=10,
        headers={**auth(KEY), "Content-Type": "application/x-ndjson"},
    )  # fmt: skip
    assert upload.status_code == 429 and upload.json()["type"] == "quota_exceeded"
    assert queued_messages(redis_client) == 2
    exactly = _post(api.url, {"requests": [BODY_9] * 2}, "/v1/tasks/batch")
    assert exactly.status_code == 202  # 100 of 100
    ids += [task["task_id"] for task in exactly.json()["tasks"]]
    assert _post(api.url, BODY_9).status_code == 429
    assert queued_messages(redis_client) == 4

    # A new UTC day: its budget less what the day before still holds (those tasks end, and
    # count, on the new day).
    budget = api.server.config.app.state.genqueue.budget
    real_clock = budget.clock
    budget.clock = lambda: real_clock() + DAY_S
    assert _post(api.url, BODY_9).status_code == 429
    budget.clock = real_clock

    # Each task's end gives its hold back and counts what it really used.
    start_worker(redis_url, simulator.url, genqueue_tenants_file=tenants_file)
    today = datetime.now(UTC).date().isoformat()
    totals = [
        wait_final(api.url, KEY, task_id)["result"]["usage"]["total_tokens"] for task_id in ids
    ]
    deadline = time.monotonic() + 20
    while redis_client.exists(keys.reserved_tokens("metered")):  # every day's hold settled
        assert time.monotonic() < deadline, redis_client.hgetall(keys.reserved_tokens("metered"))
        time.sleep(0.1)
    used = int(redis_client.hget(keys.usage("metered", today), "total_tokens") or 0)
    assert used == sum(totals)  # counted on the day each task ended
    # Settled: the new day has its whole budget.
    budget.clock = lambda: real_clock() + DAY_S
    assert _post(api.url, BODY_41).status_code == 202
    assert _post(api.url, BODY_41).status_code == 202
    budget.clock = real_clock


@pytest.mark.timeout(60)
def test_an_openai_call_past_the_budget_is_429_in_openai_shape(
    api_factory, redis_url, redis_client, tmp_path
) -> None:
    tenants_file = write_tenants(tmp_path / "tenants.toml", TENANTS)
    api = api_factory(redis_url, api_keys="", tenants_file=tenants_file, api_openai_wait_s=0.2)
    body = {"model": "default", "prompt": "abcd", "max_tokens": 200}  # 201 > 100
    refused = requests.post(f"{api.url}/v1/completions", json=body, headers=auth(KEY), timeout=10)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded" and error["type"] == "rate_limit_error"
    assert abs(int(refused.headers["Retry-After"]) - seconds_to_midnight(time.time())) <= 2
    assert queued_messages(redis_client) == 0


@pytest.mark.timeout(60)
def test_a_budget_is_not_spent_twice_across_utc_midnight(api_factory, redis_url, tmp_path) -> None:
    """A hold at 23:59:59 is of a task that ends, and counts, on the next day: that day's
    budget is what is left of it."""
    tenants_file = write_tenants(tmp_path / "tenants.toml", TENANTS)
    api = api_factory(redis_url, api_keys="", tenants_file=tenants_file)
    budget = api.server.config.app.state.genqueue.budget
    midnight = (time.time() // DAY_S + 1) * DAY_S
    body_60 = {"prompt": "abcd", "template": "raw", "params": {"max_tokens": 59}}
    body_40 = {"prompt": "abcd", "template": "raw", "params": {"max_tokens": 39}}
    budget.clock = lambda: midnight - 1
    assert _post(api.url, body_60).status_code == 202
    budget.clock = lambda: midnight + 1
    refused = _post(api.url, body_60)
    assert refused.status_code == 429 and refused.json()["type"] == "quota_exceeded"
    assert "60 of this tenant's 100" in refused.json()["detail"]
    assert _post(api.url, body_40).status_code == 202  # 60 + 40: the budget, exactly
    # Two days on, the day before's holds still count (40), older ones (60) no longer do.
    budget.clock = lambda: midnight + DAY_S + 1
    assert _post(api.url, body_60).status_code == 202


@pytest.mark.timeout(60)
def test_cancelling_a_queued_task_gives_its_hold_back_at_once(
    api_factory, redis_url, redis_client, tmp_path
) -> None:
    tenants_file = write_tenants(tmp_path / "tenants.toml", TENANTS)
    api = api_factory(redis_url, api_keys="", tenants_file=tenants_file)
    ids = [_post(api.url, BODY_41).json()["task_id"] for _ in range(2)]  # 82 of 100 held
    assert _post(api.url, BODY_41).status_code == 429
    # No worker runs: the cancelled task's 41 come back with its DELETE, not when a worker
    # reaches its message.
    cancelled = requests.delete(f"{api.url}/v1/tasks/{ids[0]}", headers=auth(KEY), timeout=10)
    assert cancelled.json()["status"] == "cancelled"
    today = datetime.now(UTC).date().isoformat()
    assert redis_client.hget(keys.reserved_tokens("metered"), today) == b"41"
    assert _post(api.url, BODY_41).status_code == 202
    # Cancelled twice, or reached by a worker later: given back once.
    requests.delete(f"{api.url}/v1/tasks/{ids[0]}", headers=auth(KEY), timeout=10)
    assert redis_client.hget(keys.reserved_tokens("metered"), today) == b"82"
