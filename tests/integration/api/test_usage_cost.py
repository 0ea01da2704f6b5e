"""Usage gains its cost: each endpoint's GPU-seconds at its ``usd_per_hour``, per tenant, over
``GET /v1/usage`` and ``genqueue usage`` (api_producer/usage.py, genqueue/cli/usage.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from api_producer.usage import prices_of, rows_of
from tests.integration.api.conftest import API_KEY
from worker import keys
from worker.endpoints.config import load_endpoints
from worker.settings import Settings

pytestmark = pytest.mark.timeout(60)

TENANT = "key-" + hashlib.sha256(API_KEY.encode()).hexdigest()[:8]


@pytest.fixture
def priced(tmp_path: Path) -> Path:
    path = tmp_path / "endpoints.toml"
    path.write_text(
        '[endpoints.big]\nurl = "http://127.0.0.1:9"\nusd_per_hour = 2.0\n'
        '[endpoints.spare]\nurl = "http://127.0.0.1:9"\n'
    )
    return path


def test_a_row_is_priced_at_its_endpoints_usd_per_hour(priced: Path) -> None:
    prices = prices_of(load_endpoints(Settings(endpoints_file=priced)))
    assert prices == {"big": 2.0}
    raw = {b"big:gpu_ms": b"1800000", b"spare:gpu_ms": b"60000", b"total_tokens": b"9"}
    big, spare = rows_of("t", datetime.now(UTC).date(), raw, prices)
    assert (big.endpoint, big.gpu_seconds, big.cost_usd) == ("big", 1800.0, 1.0)
    assert (spare.endpoint, spare.gpu_seconds, spare.cost_usd) == ("spare", 60.0, None)
    assert prices_of(None) == {}


def test_usage_over_http_and_the_cli_says_what_it_cost(
    api_factory: Any, redis_url: str, redis_client: redis.Redis, priced: Path
) -> None:
    day = datetime.now(UTC).date().isoformat()
    redis_client.hset(
        keys.usage(TENANT, day),
        mapping={"big:succeeded": 3, "big:gpu_ms": 1_800_000, "spare:gpu_ms": 90},
    )
    redis_client.sadd(keys.usage_tenants(day), TENANT)
    api = api_factory(redis_url, endpoints_file=priced)
    answer = requests.get(
        f"{api.url}/v1/usage", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    rows = {row["endpoint"]: row for row in answer.json()["usage"]}
    assert rows["big"]["tenant"] == TENANT
    assert (rows["big"]["gpu_seconds"], rows["big"]["cost_usd"]) == (1800.0, 1.0)
    assert rows["spare"]["cost_usd"] is None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQUEUE_", "RUNPOD_"))}
    env["GENQUEUE_API_KEYS"] = API_KEY
    done = subprocess.run(
        [sys.executable, "-m", "genqueue", "usage", "--api", api.url],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    header, big, spare = done.stdout.splitlines()
    assert header.split()[-2:] == ["gpu_seconds", "cost_usd"]
    assert big.split()[-2:] == ["1800.000", "1.00"]
    assert spare.split()[-2:] == ["0.090", "-"]
