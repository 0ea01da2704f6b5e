"""Two plain keys are two tenants: neither reaches the other's tasks or batches; an admin does."""

from __future__ import annotations

import json
import uuid

import requests

from tests.integration.tenants.conftest import (
    BODY,
    KEY_A,
    KEY_ADMIN,
    KEY_B,
    TENANT_A,
    admin_file,
    auth,
    submit,
    wait_final,
)


def _not_found_like_unknown(url: str, key: str, method: str, path: str, real_id: str) -> None:
    """``path`` with ``real_id`` answers exactly what it answers for an id that never existed."""
    fake_id = str(uuid.uuid4())
    real = requests.request(method, f"{url}{path.format(real_id)}", headers=auth(key), timeout=10)
    fake = requests.request(method, f"{url}{path.format(fake_id)}", headers=auth(key), timeout=10)
    assert real.status_code == fake.status_code == 404, (real.text, fake.text)
    assert real.json()["detail"].replace(real_id, "ID") == fake.json()["detail"].replace(
        fake_id, "ID"
    )


def test_two_plain_keys_cannot_reach_each_others_tasks(
    api_factory, redis_url, redis_client, simulator, start_worker, tmp_path
) -> None:
    start_worker(redis_url, simulator.url)
    api = api_factory(redis_url, api_keys=f"{KEY_A},{KEY_B}", tenants_file=admin_file(tmp_path))
    body = {**BODY, "metadata": {"secret": "of A"}}
    task_a, task_b = submit(api.url, KEY_A, body), submit(api.url, KEY_B)
    assert redis_client.hget(f"genqueue:task:{task_a}", "tenant") == TENANT_A.encode()
    for key, other in ((KEY_B, task_a), (KEY_A, task_b)):
        for method, path in (
            ("GET", "/v1/tasks/{}"),
            ("GET", "/v1/tasks/{}?wait=2"),
            ("GET", "/v1/tasks/{}/stream"),
            ("DELETE", "/v1/tasks/{}"),
        ):
            _not_found_like_unknown(api.url, key, method, path, other)
    # Each still reads its own; nothing was cancelled by the other.
    assert wait_final(api.url, KEY_A, task_a)["status"] == "succeeded"
    assert wait_final(api.url, KEY_B, task_b)["status"] == "succeeded"
    # The admin reads both, metadata included.
    assert wait_final(api.url, KEY_ADMIN, task_a)["metadata"] == {"secret": "of A"}
    assert wait_final(api.url, KEY_ADMIN, task_b)["status"] == "succeeded"


def test_batches_belong_to_their_tenant(
    api_factory, redis_url, simulator, start_worker, tmp_path
) -> None:
    start_worker(redis_url, simulator.url)
    api = api_factory(redis_url, api_keys=f"{KEY_A},{KEY_B}", tenants_file=admin_file(tmp_path))
    lines = "".join(json.dumps({**BODY, "custom_id": f"c{i}"}) + "\n" for i in range(3))
    created = requests.post(
        f"{api.url}/v1/batches", data=lines, timeout=10,
        headers={**auth(KEY_A), "Content-Type": "application/x-ndjson"},
    )  # fmt: skip
    assert created.status_code == 202, created.text
    batch_id = created.json()["batch_id"]
    for method, path in (
        ("GET", "/v1/batches/{}"),
        ("GET", "/v1/batches/{}/results"),
        ("DELETE", "/v1/batches/{}"),
    ):
        _not_found_like_unknown(api.url, KEY_B, method, path, batch_id)
    # Its tasks are A's too.
    results = requests.get(
        f"{api.url}/v1/batches/{batch_id}/results", headers=auth(KEY_A), timeout=10
    )
    assert results.status_code == 200
    task_id = json.loads(results.text.splitlines()[0])["task_id"]
    _not_found_like_unknown(api.url, KEY_B, "GET", "/v1/tasks/{}", task_id)
    # The admin reads it.
    seen = requests.get(f"{api.url}/v1/batches/{batch_id}", headers=auth(KEY_ADMIN), timeout=10)
    assert seen.status_code == 200 and seen.json()["total"] == 3


def test_an_admin_cancels_anyones_task_and_idempotency_keys_stay_per_tenant(
    api_factory, redis_url, tmp_path
) -> None:
    api = api_factory(redis_url, api_keys=f"{KEY_A},{KEY_B}", tenants_file=admin_file(tmp_path))
    same = {"Idempotency-Key": "order-1"}
    first_a = submit(api.url, KEY_A, headers=same)
    assert submit(api.url, KEY_A, headers=same) == first_a
    first_b = submit(api.url, KEY_B, headers=same)
    assert first_b != first_a  # B's key does not reach A's task
    cancelled = requests.delete(
        f"{api.url}/v1/tasks/{first_a}", headers=auth(KEY_ADMIN), timeout=10
    )
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_a_body_cannot_name_its_tenant(api_factory, redis_url) -> None:
    api = api_factory(redis_url, api_keys=f"{KEY_A},{KEY_B}")
    answer = requests.post(
        f"{api.url}/v1/tasks", json={**BODY, "tenant": "ops"}, headers=auth(KEY_A), timeout=10
    )
    assert answer.status_code == 422
    assert "tenant" in answer.text


def test_a_celery_task_belongs_to_the_tenant_it_names(
    api_factory, redis_url, celery_client, simulator, start_worker
) -> None:
    start_worker(redis_url, simulator.url)
    api = api_factory(redis_url, api_keys=f"{KEY_A},{KEY_B}")
    named = celery_client.send_task(
        "genqueue.generate", kwargs={"request": {**BODY, "tenant": TENANT_A}}
    )
    unnamed = celery_client.send_task("genqueue.generate", kwargs={"request": BODY})
    named.get(timeout=30)
    unnamed.get(timeout=30)
    assert wait_final(api.url, KEY_A, named.id)["status"] == "succeeded"
    _not_found_like_unknown(api.url, KEY_B, "GET", "/v1/tasks/{}", named.id)
    # No tenant named: "internal", which no plain key reaches.
    _not_found_like_unknown(api.url, KEY_A, "GET", "/v1/tasks/{}", unnamed.id)


def test_an_openai_call_is_a_task_of_the_callers_tenant(
    api_factory, redis_url, redis_client, simulator, start_worker, tmp_path
) -> None:
    start_worker(redis_url, simulator.url)
    api = api_factory(redis_url, api_keys=f"{KEY_A},{KEY_B}", tenants_file=admin_file(tmp_path))
    answer = requests.post(
        f"{api.url}/v1/completions", headers=auth(KEY_A), timeout=30,
        json={"model": "default", "prompt": "Hi", "max_tokens": 4},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    task_id = answer.json()["id"]
    assert redis_client.hget(f"genqueue:task:{task_id}", "tenant") == TENANT_A.encode()
    _not_found_like_unknown(api.url, KEY_B, "GET", "/v1/tasks/{}", task_id)
    assert wait_final(api.url, KEY_A, task_id)["status"] == "succeeded"
