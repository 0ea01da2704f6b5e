"""Two llama.cpp servers (llama-cpp-python's) as one pool: the work spreads over both, each
within its cap (counted in front of each by a proxy: the server queues extra requests
silently)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.api.conftest import api_factory
from tests.real_servers.conftest import REAL_SERVERS, CountingProxy, LlamaServer
from tests.real_servers.test_llama_cpp import Pipeline

__all__ = ["api_factory"]

pytestmark = REAL_SERVERS


@pytest.fixture
def two_servers(tiny_model: Path, tmp_path: Path) -> Iterator[list[CountingProxy]]:
    servers = [LlamaServer(tiny_model, tmp_path / f"llama{i}.log") for i in range(2)]
    proxies: list[CountingProxy] = []
    try:
        for server in servers:
            server.start()
            proxies.append(CountingProxy(server.url))
        yield proxies
    finally:
        for proxy in proxies:
            proxy.close()
        for server in servers:
            server.kill()


def test_two_servers_as_a_pool(
    two_servers, tmp_path, redis_url, redis_client, api_factory, start_worker
) -> None:
    urls = ", ".join(f'"{proxy.url}"' for proxy in two_servers)
    path = tmp_path / "endpoints.toml"
    path.write_text(f'[endpoints.llama]\nkind = "llamacpp"\nurls = [{urls}]\nmax_concurrency = 1\n')
    start_worker(redis_url, "", GENQUEUE_ENDPOINTS_FILE=str(path), RUNPOD_ENDPOINT_URL="")
    api = api_factory(redis_url, endpoints_file=path, runpod_endpoint_url=None)
    flow = Pipeline(api.url, redis_client)
    ids = [flow.submit({"prompt": f"n{i}", "params": {"max_tokens": 8}}) for i in range(8)]
    statuses = [flow.wait(task_id) for task_id in ids]
    assert [s["status"] for s in statuses] == ["succeeded"] * 8
    assert sum(proxy.arrived for proxy in two_servers) == 8
    assert [proxy.max_in_flight for proxy in two_servers] == [1, 1]
    assert min(proxy.arrived for proxy in two_servers) >= 2
