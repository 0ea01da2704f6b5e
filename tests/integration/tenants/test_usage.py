"""Usage: counted at each task's end, once, and read back by tenant (HTTP, CLI, metrics)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest
import requests

from tests.integration.tenants.conftest import (
    BODY,
    KEY_A,
    KEY_ADMIN,
    TENANT_A,
    auth,
    submit,
    wait_final,
    write_tenants,
)
from worker.tenancy.tenants import hash_key

KEY_BILLING = "billing-key-1"
TENANTS = f"""
[tenants.billing]
keys_env = "BILLING_KEYS"

[tenants.ops]
key_hashes = ["{hash_key(KEY_ADMIN)}"]
admin = true
"""


def _usage(url: str, key: str, **params: str) -> requests.Response:
    return requests.get(f"{url}/v1/usage", params=params, headers=auth(key), timeout=10)


def _rows(answer: requests.Response) -> list[dict]:
    assert answer.status_code == 200, answer.text
    rows: list[dict] = answer.json()["usage"]
    return rows


def _idle(redis_client) -> bool:
    queued = sum(redis_client.llen(name) for name in ("celery", "genqueue"))
    return queued == 0 and not redis_client.hlen("unacked")


@pytest.mark.timeout(120)
def test_usage_is_the_sum_of_the_results_counted_once(
    api_factory, redis_url, redis_client, celery_client, simulator, start_worker, tmp_path,
    monkeypatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("BILLING_KEYS", KEY_BILLING)
    tenants_file = write_tenants(tmp_path / "tenants.toml", TENANTS)
    start_worker(
        redis_url, simulator.url, genqueue_tenants_file=tenants_file, billing_keys=KEY_BILLING
    )
    api = api_factory(redis_url, api_keys=KEY_A, tenants_file=tenants_file)
    prompts = ["one two three", "four five", "six"]
    ids = [submit(api.url, KEY_BILLING, {**BODY, "prompt": p}) for p in prompts]
    results = [wait_final(api.url, KEY_BILLING, task_id)["result"] for task_id in ids]
    mine = wait_final(api.url, KEY_A, submit(api.url, KEY_A))["result"]

    # The first task's message delivered again: its result is stored, nothing is counted twice.
    celery_client.send_task(
        "genqueue.generate", kwargs={"request": {**BODY, "tenant": "billing"}}, task_id=ids[0]
    )
    deadline = time.monotonic() + 30
    while not _idle(redis_client):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)

    today = datetime.now(UTC).date().isoformat()
    [row] = _rows(_usage(api.url, KEY_BILLING, **{"from": today, "to": today}))
    assert row["tenant"] == "billing" and row["date"] == today and row["endpoint"] == "default"
    assert row["tasks"] == {"succeeded": 3, "failed": 0, "cancelled": 0}
    assert row["prompt_tokens"] == sum(r["usage"]["prompt_tokens"] for r in results)
    assert row["completion_tokens"] == sum(r["usage"]["completion_tokens"] for r in results)
    assert row["gpu_seconds"] == pytest.approx(sum(r["latency_ms"] for r in results) / 1000)

    # A plain key sees its own only; an admin sees everyone, or one tenant.
    [own] = _rows(_usage(api.url, KEY_A))
    assert (
        own["tenant"] == TENANT_A and own["completion_tokens"] == mine["usage"]["completion_tokens"]
    )
    assert {r["tenant"] for r in _rows(_usage(api.url, KEY_ADMIN))} == {"billing", TENANT_A}
    assert [r["tenant"] for r in _rows(_usage(api.url, KEY_ADMIN, tenant="billing"))] == ["billing"]
    assert _usage(api.url, KEY_A, tenant="billing").status_code == 403

    # The command line prints the same.
    env = {**os.environ, "GENQUEUE_API_KEYS": KEY_BILLING}
    env.pop("GENQUEUE_TENANTS_FILE", None)
    cli = subprocess.run(
        [sys.executable, "-m", "genqueue", "usage", "--json", "--api", api.url],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(cli.stdout)["usage"] == [row]
    table = subprocess.run(
        [sys.executable, "-m", "genqueue", "usage", "--api", api.url],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "billing" in table and str(row["completion_tokens"]) in table

    # Metrics: the named tenant by name, the plain key under "other".
    metrics = requests.get(f"{api.url}/metrics", headers=auth(KEY_ADMIN), timeout=10).text
    completion = row["completion_tokens"]
    assert (
        f'genqueue_tenant_tokens_total{{endpoint="default",kind="completion",tenant="billing"}} '
        f"{float(completion)}" in metrics
    )
    assert 'tenant="other"' in metrics and TENANT_A not in metrics
    assert "genqueue_tenant_gpu_seconds_total" in metrics


@pytest.mark.timeout(60)
def test_the_gpu_time_of_a_failed_call_is_counted_too(
    api_factory, redis_url, simulator, start_worker
) -> None:
    """A call that failed after a second of work (a 500) is retried; the tenant's GPU time is
    both calls', not only the one that gave the result."""
    start_worker(redis_url, simulator.url)
    api = api_factory(redis_url, api_keys=KEY_A)
    simulator.script({"status": 500, "delay_s": 1.0})
    done = wait_final(api.url, KEY_A, submit(api.url, KEY_A))
    assert done["status"] == "succeeded" and done["attempts"] == 2
    assert simulator.stats()["calls"] == 2

    today = datetime.now(UTC).date().isoformat()
    [row] = _rows(_usage(api.url, KEY_A, **{"from": today, "to": today}))
    assert row["tasks"] == {"succeeded": 1, "failed": 0, "cancelled": 0}
    succeeded_s = done["result"]["latency_ms"] / 1000
    assert 1.0 + succeeded_s <= row["gpu_seconds"] < 2.0 + succeeded_s


@pytest.mark.timeout(60)
def test_the_gpu_time_of_a_call_cancelled_while_it_ran_is_counted(
    api_factory, redis_url, simulator, start_worker
) -> None:
    start_worker(redis_url, simulator.url)
    api = api_factory(redis_url, api_keys=KEY_A)
    simulator.configure(latency_s=30)
    task_id = submit(api.url, KEY_A)
    deadline = time.monotonic() + 15
    while simulator.stats()["in_flight"] != 1:
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.05)
    time.sleep(1.0)  # a second of the GPU's work
    cancelled = requests.delete(f"{api.url}/v1/tasks/{task_id}", headers=auth(KEY_A), timeout=20)
    assert cancelled.status_code == 200, cancelled.text
    assert wait_final(api.url, KEY_A, task_id)["status"] == "cancelled"

    today = datetime.now(UTC).date().isoformat()
    deadline = time.monotonic() + 10
    while True:  # counted as the cut call ends, in the worker
        rows = _rows(_usage(api.url, KEY_A, **{"from": today, "to": today}))
        if rows and rows[0]["tasks"]["cancelled"] == 1:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.1)
    assert 1.0 <= rows[0]["gpu_seconds"] < 10.0
