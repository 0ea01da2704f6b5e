"""The API served for real by uvicorn in a thread, on a free loopback port."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import requests
import uvicorn

from api_producer.main import create_app
from genqueue.embedded_redis import free_port
from worker.settings import Settings
from worker.tenancy.tenants import key_tenant

API_KEY = "test-key-1"
#: The tenant of API_KEY: a task sent by a producer (no key) for it names this tenant.
API_TENANT = key_tenant(API_KEY)


class ServedApi:
    def __init__(self, server: uvicorn.Server, thread: threading.Thread, url: str) -> None:
        self.server = server
        self.thread = thread
        self.url = url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve_api(settings: Settings) -> ServedApi:
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            requests.get(f"{url}/healthz", timeout=1)
            return ServedApi(server, thread, url)
        except requests.ConnectionError:
            time.sleep(0.05)
    raise TimeoutError("the API did not start")


@pytest.fixture
def api_factory() -> Iterator[Callable[..., ServedApi]]:
    served: list[ServedApi] = []

    def start(redis_url: str, **fields: Any) -> ServedApi:
        fields.setdefault("api_keys", API_KEY)
        api = serve_api(Settings(redis_url=redis_url, **fields))
        served.append(api)
        return api

    yield start
    for api in served:
        api.stop()


@pytest.fixture
def api(api_factory: Callable[..., ServedApi], redis_url: str) -> ServedApi:
    return api_factory(redis_url)


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def queued_messages(client: redis.Redis) -> int:
    """Messages waiting in genqueue's queues, all priorities."""
    total = 0
    for key in client.scan_iter(match="genqueue*", count=1000):
        if client.type(key) == b"list":
            total += int(client.llen(key))
    return total
