"""What the worker holds a tenant to, whoever sent the task: its endpoints (a fallback it may
not use is skipped) and its ``max_priority`` (a Celery producer's priority is capped)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from genqueue.embedded_redis import free_port
from tests.integration.observability.conftest import wait_for
from tests.integration.tenants.conftest import auth, submit, wait_final, write_tenants
from worker.tenancy.tenants import hash_key

KEY_NARROW, KEY_WIDE = "narrow-key", "wide-key"
FAST = {"GENQUEUE_RETRY_BASE_DELAY_S": 0.1, "GENQUEUE_RETRY_MAX_DELAY_S": 0.2}
TENANTS = f"""
[tenants.narrow]
key_hashes = ["{hash_key(KEY_NARROW)}"]
endpoints = ["dead"]

[tenants.wide]
key_hashes = ["{hash_key(KEY_WIDE)}"]
endpoints = ["dead", "main"]

[tenants.low]
max_priority = 2
"""


def _files(tmp_path: Path, simulator_url: str) -> tuple[Path, Path]:
    endpoints = tmp_path / "endpoints.toml"
    endpoints.write_text(
        f'default = "dead"\n[endpoints.dead]\nurl = "http://127.0.0.1:{free_port()}"\n'
        f'fallbacks = ["main"]\n[endpoints.main]\nurl = "{simulator_url}"\n',
        encoding="utf-8",
    )
    return endpoints, write_tenants(tmp_path / "tenants.toml", TENANTS)


@pytest.mark.timeout(120)
def test_a_fallback_the_tenant_may_not_use_is_skipped(
    api_factory, redis_url, simulator, start_worker, tmp_path, celery_client
) -> None:
    endpoints, tenants = _files(tmp_path, simulator.url)
    start_worker(
        redis_url, "", GENQUEUE_ENDPOINTS_FILE=endpoints, GENQUEUE_TENANTS_FILE=tenants,
        GENQUEUE_RETRY_MAX_ATTEMPTS=2, **FAST,
    )  # fmt: skip
    api = api_factory(redis_url, api_keys="", tenants_file=tenants, endpoints_file=endpoints)
    body = {"prompt": "hi", "template": "raw", "params": {"max_tokens": 4}, "endpoint": "dead"}
    narrow = wait_final(api.url, KEY_NARROW, submit(api.url, KEY_NARROW, body))
    assert narrow["status"] == "failed" and narrow["result"] is None
    assert "main" not in narrow["error"]["message"]
    # A Celery producer's task of the same tenant is held to the same endpoints.
    sent = celery_client.send_task(
        "genqueue.generate", kwargs={"request": {**body, "tenant": "narrow"}}
    )
    with pytest.raises(Exception):  # noqa: B017 - the task's own error, re-raised
        sent.get(timeout=60)
    assert simulator.stats()["calls"] == 0
    usage = requests.get(f"{api.url}/v1/usage", headers=auth(KEY_NARROW), timeout=10).json()
    assert {row["endpoint"] for row in usage["usage"]} == {"dead"}
    # A tenant that may use the fallback is served there.
    wide = wait_final(api.url, KEY_WIDE, submit(api.url, KEY_WIDE, body))
    assert wide["status"] == "succeeded", wide
    assert wide["result"]["endpoint"] == "main"
    assert wide["result"]["endpoints_tried"] == ["dead", "main"]
    # An endpoint the tenant may not use, named or the default, is refused at submission.
    refused = requests.post(
        f"{api.url}/v1/tasks", json={**body, "endpoint": "main"}, headers=auth(KEY_NARROW),
        timeout=10,
    )  # fmt: skip
    assert refused.status_code == 422 and "main" in refused.text


@pytest.mark.timeout(90)
def test_the_worker_caps_a_celery_producers_priority_at_its_tenants_max(
    redis_url, simulator, start_worker, tmp_path, celery_client
) -> None:
    tenants = write_tenants(tmp_path / "tenants.toml", TENANTS)
    start_worker(
        redis_url, simulator.url, GENQUEUE_TENANTS_FILE=tenants, RUNPOD_MAX_CONCURRENCY=1,
        GENQUEUE_OLDEST_BAND_EVERY=0,  # strict priority: the order is the bands' alone
    )  # fmt: skip
    simulator.configure(latency_s=1.0)

    def send(prompt: str, priority: int, tenant: str | None = None) -> object:
        request = {"prompt": prompt, "template": "raw", "priority": priority}
        if tenant is not None:
            request["tenant"] = tenant
        return celery_client.send_task(
            "genqueue.generate", kwargs={"request": request}, priority=priority
        )

    blocker = send("blocker", 0)
    wait_for(lambda: simulator.stats()["in_flight"] == 1, 20, "the first call")
    # Both wait for the one slot: the low tenant's 9 counts as its max_priority, 2.
    capped = send("capped", 9, tenant="low")
    time.sleep(0.3)
    other = send("other", 5)
    time.sleep(0.5)  # both wait in the endpoint's admission queue now
    for result in (blocker, capped, other):
        result.get(timeout=30)  # type: ignore[attr-defined]
    prompts = [body["prompt"] for body in simulator.stats()["last_bodies"]]
    assert prompts == ["blocker", "other", "capped"]
