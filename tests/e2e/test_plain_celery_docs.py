"""The plain-Celery example of docs/http-api.md, run as it is written (with canaries for its
prompt and metadata) against a ``genqueue worker`` and Flower: its message's headers, what Flower
shows and what Flower keeps hold neither (tests/integration/security/test_flower_args.py: the
messages genqueue sends itself)."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from tests.conftest import ROOT
from tests.integration.security.helpers import run_flower, wait_until

pytestmark = pytest.mark.timeout(120)

LOGIN = ("admin", "flower-pw")
#: What the example tells Flower instead of the request.
SHOWN = "{'request': '(not shown)'}"


def _example() -> str:
    """The Python block of the page's "With plain Celery" section."""
    page = (ROOT / "docs" / "http-api.md").read_text()
    section = page.split("## With plain Celery", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "no Python example in the plain-Celery section"
    return found.group(1)


def _queued_message(client: redis.Redis, task_id: str) -> dict[str, Any] | None:
    for key in client.scan_iter():
        if client.type(key) == b"list":
            for item in client.lrange(key, 0, -1):
                message = json.loads(item)
                if message.get("headers", {}).get("id") == task_id:
                    return dict(message)
    return None


def _flower_task(url: str, task_id: str) -> dict[str, Any] | None:
    response = requests.get(f"{url}/api/task/info/{task_id}", auth=LOGIN, timeout=10)
    return dict(response.json()) if response.status_code == 200 else None


def test_the_documented_plain_celery_call_shows_flower_no_prompt(
    redis_url: str, redis_client: redis.Redis, simulator: Any, start_worker: Any, tmp_path: Path
) -> None:
    prompt, caller = (f"canary{what}{secrets.token_hex(8)}" for what in ("prompt", "meta"))
    example = _example()
    assert example.count('"Hi"') == 1 and example.count('"billing-service"') == 1
    example = example.replace('"Hi"', repr(prompt)).replace('"billing-service"', repr(caller))
    send, _, get = example.partition("res.get(")
    namespace: dict[str, Any] = {"REDIS_URL": redis_url}

    with run_flower(redis_url, tmp_path, FLOWER_BASIC_AUTH=":".join(LOGIN)) as flower:
        exec(send, namespace)  # the message waits: no worker yet
        res = namespace["res"]
        message = wait_until(lambda: _queued_message(redis_client, res.id), 10, "the message")
        start_worker(redis_url, simulator.url)
        result = eval("res.get(" + get.split("#", 1)[0], namespace)
        info = wait_until(
            lambda: (t := _flower_task(flower.url, res.id)) and t["state"] == "SUCCESS" and t,
            15,
            "Flower to see the success",
        )
        listed = requests.get(f"{flower.url}/api/tasks", auth=LOGIN, timeout=10).text
        page = requests.get(f"{flower.url}/task/{res.id}", auth=LOGIN, timeout=10).text
    namespace["app"].close()

    assert set(result) >= {"text", "finish_reason", "model", "usage", "latency_ms"}
    headers = message["headers"]
    assert (headers["argsrepr"], headers["kwargsrepr"]) == ("()", SHOWN)
    assert (info["args"], info["kwargs"]) == ("()", SHOWN)
    saved = b"".join(path.read_bytes() for path in (tmp_path / "flower-data").glob("flower.db*"))
    assert saved, "Flower saved no state"
    outside_body = json.dumps({k: v for k, v in message.items() if k != "body"})
    for where, text in {
        "the message outside its body": outside_body,
        "Flower's task list": listed,
        "Flower's task info": json.dumps(info),
        "Flower's task page": page,
        "flower.db": saved.decode(errors="replace"),
    }.items():
        assert prompt not in text and caller not in text, where
