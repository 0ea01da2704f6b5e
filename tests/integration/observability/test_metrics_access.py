"""``/metrics`` on the API port: the shared state to any scraper, each tenant's usage only to
an admin's key."""

from __future__ import annotations

import pytest
import requests

from tests.integration.tenants.conftest import auth, submit, wait_final, write_tenants
from worker.tenancy.tenants import hash_key

pytestmark = pytest.mark.timeout(60)
TENANTS = (
    f'[tenants.billing]\nkey_hashes = ["{hash_key("billing-key")}"]\n'
    f'[tenants.ops]\nkey_hashes = ["{hash_key("ops-key")}"]\nadmin = true\n'
)


def test_tenant_usage_is_for_admins_only(
    api_factory, redis_url, simulator, start_worker, tmp_path
) -> None:
    tenants = write_tenants(tmp_path / "tenants.toml", TENANTS)
    start_worker(redis_url, simulator.url, genqueue_tenants_file=tenants)
    api = api_factory(
        redis_url, api_keys="", tenants_file=tenants, runpod_endpoint_url=simulator.url
    )
    wait_final(api.url, "billing-key", submit(api.url, "billing-key"))
    url = f"{api.url}/metrics"
    for headers in ({}, auth("billing-key")):
        scraped = requests.get(url, headers=headers, timeout=10)
        assert scraped.status_code == 200
        assert "genqueue_queue_depth" in scraped.text  # the shared state, for any scraper
        assert "genqueue_tenant_" not in scraped.text and "billing" not in scraped.text
    admin = requests.get(url, headers=auth("ops-key"), timeout=10).text
    assert (
        'genqueue_tenant_tokens_total{endpoint="default",kind="completion",tenant="billing"}'
        in admin
    )
    wrong = requests.get(url, headers=auth("not-a-key"), timeout=10)
    assert wrong.status_code == 401 and "genqueue_" not in wrong.text
