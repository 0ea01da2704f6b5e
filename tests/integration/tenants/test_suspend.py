"""0 in the tenants file means none: ``requests_per_minute = 0`` or ``tokens_per_day = 0``
suspends a tenant (every submission refused 403, under a global limit or not), while it still
reads and cancels its own tasks; an edit of the file suspends and restores it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests

from tests.integration.observability.conftest import wait_for
from tests.integration.tenants.conftest import BODY, auth, submit, write_tenants
from worker.tenancy.tenants import hash_key

KEY = "suspended-key"
TENANT = f'[tenants.red]\nkey_hashes = ["{hash_key(KEY)}"]\n'


def _rewrite(path: Path, text: str) -> None:
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(stamp, stamp))


def _submit(url: str) -> int:
    return requests.post(f"{url}/v1/tasks", json=BODY, headers=auth(KEY), timeout=10).status_code


def _submissions(url: str) -> list[requests.Response]:
    """The tenant's every way to submit."""
    lines = json.dumps({**BODY, "custom_id": "c1"}) + "\n"
    openai = {"model": "default", "prompt": "hi", "max_tokens": 4}
    batch_headers = {**auth(KEY), "Content-Type": "application/x-ndjson"}
    return [
        requests.post(f"{url}/v1/tasks", json=BODY, headers=auth(KEY), timeout=10),
        requests.post(
            f"{url}/v1/tasks/batch", json={"requests": [BODY]}, headers=auth(KEY), timeout=10
        ),
        requests.post(f"{url}/v1/batches", data=lines, headers=batch_headers, timeout=10),
        requests.post(f"{url}/v1/completions", json=openai, headers=auth(KEY), timeout=10),
    ]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("suspended", "global_limit"),
    [("requests_per_minute = 0", 100), ("requests_per_minute = 0", 0), ("tokens_per_day = 0", 0)],
)
def test_zero_suspends_a_tenant_which_still_reads_its_tasks(
    api_factory, redis_url, tmp_path, suspended: str, global_limit: int
) -> None:
    path = write_tenants(tmp_path / "tenants.toml", TENANT)
    api = api_factory(
        redis_url, api_keys="", tenants_file=path, api_rate_limit_per_minute=global_limit,
        runpod_endpoint_url="http://127.0.0.1:9", api_openai_wait_s=0.2,
    )  # fmt: skip
    task_id = submit(api.url, KEY)
    _rewrite(path, TENANT + suspended + "\n")
    wait_for(lambda: _submit(api.url) == 403, 10, "the tenant to be suspended")
    answers = _submissions(api.url)
    assert [answer.status_code for answer in answers] == [403, 403, 403, 403]
    assert "suspended" in answers[0].json()["detail"]
    assert "suspended" in answers[3].json()["error"]["message"]  # in OpenAI's shape
    # Its own tasks are still its own to read and cancel.
    status = requests.get(f"{api.url}/v1/tasks/{task_id}", headers=auth(KEY), timeout=10)
    assert status.status_code == 200 and status.json()["status"] == "queued"
    cancel = requests.delete(f"{api.url}/v1/tasks/{task_id}", headers=auth(KEY), timeout=10)
    assert cancel.status_code in (200, 202), cancel.text
    # Restored by the next edit.
    _rewrite(path, TENANT)
    wait_for(lambda: _submit(api.url) == 202, 10, "the tenant back")
