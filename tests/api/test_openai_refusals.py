"""What the OpenAI routes refuse, and how: a call refused after it was charged gives the charge
back, and every refusal is OpenAI's error shape, naming the field."""

from __future__ import annotations

import pytest
import requests

from tests.api.conftest import API_KEY
from tests.tenants.conftest import write_tenants
from worker.tenants import hash_key

pytestmark = pytest.mark.timeout(60)
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def post(url: str, body: dict, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(
        f"{url}/v1/completions", json=body, headers={**AUTH, **(headers or {})}, timeout=10
    )


def test_a_call_refused_after_its_charge_is_refunded(redis_url, api_factory, tmp_path) -> None:
    # No worker: an accepted call waits 0.2 s, then answers 504 (the task stays queued).
    api = api_factory(redis_url, api_rate_limit_per_minute=2, api_openai_wait_s=0.2)
    key = {"Idempotency-Key": "k"}
    assert post(api.url, {"model": "default", "prompt": "a"}, key).status_code == 504
    for _ in range(3):  # the same key with another body: refused, and not counted
        conflict = post(api.url, {"model": "default", "prompt": "b"}, key)
        assert conflict.status_code == 409, conflict.text
        assert conflict.json()["error"]["code"] == "idempotency_conflict"
    assert post(api.url, {"model": "default", "prompt": "c"}).status_code == 504
    limited = post(api.url, {"model": "default", "prompt": "d"})
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_call_over_the_token_budget_is_refunded(redis_url, api_factory, tmp_path) -> None:
    key = "metered-key"
    tenants = write_tenants(
        tmp_path / "tenants.toml",
        f'[tenants.metered]\nkey_hashes = ["{hash_key(key)}"]\ntokens_per_day = 100\n'
        "requests_per_minute = 1\n",
    )
    api = api_factory(redis_url, api_keys="", tenants_file=tenants, api_openai_wait_s=0.2)
    auth = {"Authorization": f"Bearer {key}"}
    for _ in range(2):
        over = post(api.url, {"model": "default", "prompt": "a", "max_tokens": 200}, auth)
        assert over.status_code == 429 and over.json()["error"]["code"] == "quota_exceeded"
    fits = post(api.url, {"model": "default", "prompt": "a", "max_tokens": 10}, auth)
    assert fits.status_code == 504, fits.text  # charged once: the one request this minute
