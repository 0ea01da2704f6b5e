"""Tenants with real processes: the API served by uvicorn, a genqueue worker, the simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from tests.integration.api.conftest import (
    api_factory as api_factory,  # the fixture, for these tests
)
from worker.tenancy.tenants import hash_key, key_tenant

KEY_A, KEY_B, KEY_ADMIN = "tenant-a-key", "tenant-b-key", "operator-key"
TENANT_A, TENANT_B = key_tenant(KEY_A), key_tenant(KEY_B)
BODY = {"prompt": "hello", "template": "raw", "params": {"max_tokens": 8}}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def write_tenants(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def admin_file(tmp_path: Path) -> Path:
    return write_tenants(
        tmp_path / "tenants.toml",
        f'[tenants.ops]\nkey_hashes = ["{hash_key(KEY_ADMIN)}"]\nadmin = true\n',
    )


def submit(
    url: str, key: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> str:
    answer = requests.post(
        f"{url}/v1/tasks", json=body or BODY, headers={**auth(key), **(headers or {})}, timeout=10
    )
    assert answer.status_code == 202, answer.text
    task_id: str = answer.json()["task_id"]
    return task_id


def wait_final(url: str, key: str, task_id: str, timeout_s: float = 30) -> dict[str, Any]:
    answer = requests.get(
        f"{url}/v1/tasks/{task_id}", params={"wait": timeout_s}, headers=auth(key),
        timeout=timeout_s + 10,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    status: dict[str, Any] = answer.json()
    assert status["status"] in ("succeeded", "failed", "cancelled"), status
    return status
