"""Flower shows a task's argument summary and a result summary, never its content.

A task is submitted with a prompt, metadata and a webhook URL that each hold a canary. The
endpoint answers 503 once (the task is retried: Celery sends a new message) and the webhook
receiver answers 503 once (the webhook task is retried too). Flower's API, its task page and the
state it saves (``flower.db``) must show none of the canaries nor the generated text, and neither
may the retried message in Redis outside its body.
"""

from __future__ import annotations

import base64
import json
import secrets
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from celery import Celery

from api_producer.producers.direct import DirectProducer, producer_celery
from tests.integration.security.helpers import TinyServer, run_flower, wait_until
from worker.contract import GenerationRequest
from worker.delivery.lost_message_sweep import sender
from worker.observability.flower_summaries import payload_summary
from worker.settings import Settings

pytestmark = pytest.mark.timeout(120)

LOGIN = ("admin", "flower-pw")
#: The endpoint's 503 asks for 3 s: the retried message waits that long, to be read in Redis.
RETRY_AFTER_S = "3"


def _canaries() -> dict[str, str]:
    return {name: f"canary{name}{secrets.token_hex(8)}" for name in ("prompt", "meta", "hook")}


def _retried_message(client: redis.Redis, task_id: str) -> dict[str, Any] | None:
    """The message of ``task_id``'s first retry, wherever it is: a queue or a worker's hands."""
    raw: list[bytes] = [json.dumps(json.loads(v)[0]).encode() for v in client.hvals("unacked")]
    for key in client.scan_iter(match="genqueue*"):
        if client.type(key) == b"list":
            raw += client.lrange(key, 0, -1)
    for item in raw:
        message = json.loads(item)
        headers = message.get("headers", {})
        if headers.get("id") == task_id and headers.get("retries") == 1:
            return dict(message)
    return None


def _outside_body(message: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in message.items() if k != "body"})


def _flower_task(url: str, task_id: str) -> dict[str, Any] | None:
    response = requests.get(f"{url}/api/task/info/{task_id}", auth=LOGIN, timeout=10)
    return dict(response.json()) if response.status_code == 200 else None


def _hook_receiver() -> TinyServer:
    """Answers 503 to the first webhook, 200 after."""
    hits: list[int] = []

    def respond(_: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        hits.append(1)
        return (503 if len(hits) == 1 else 200), {}, b""

    return TinyServer(respond)


def _leaks(secrets_by_name: dict[str, str], where: str, text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [
        f"{name} in {where}" for name, value in secrets_by_name.items() if value.encode() in data
    ]


#: The success's summary is made where the task runs: a prefork child, or the worker's process.
POOLS = {"gevent": {}, "prefork": {"GENQUEUE_WORKER_CONCURRENCY": "2"}}


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_flower_shows_no_arguments_nor_output_after_retries(
    redis_url,
    redis_client,
    simulator,
    start_worker,
    celery_client: Celery,
    tmp_path: Path,
    pool: str,
) -> None:
    canaries = _canaries()
    with (
        _hook_receiver() as receiver,
        run_flower(redis_url, tmp_path, FLOWER_BASIC_AUTH=":".join(LOGIN)) as flower,
    ):
        hook_url = f"{receiver.url}/hooks/{canaries['hook']}?token={canaries['hook']}"
        start_worker(
            redis_url,
            simulator.url,
            GENQUEUE_WEBHOOK_SECRET="whsec-flower-test",
            GENQUEUE_WEBHOOK_ALLOWLIST="127.0.0.1",
            GENQUEUE_WEBHOOK_RETRY_MAX_DELAY_S="0.3",
            GENQUEUE_WORKER_POOL=pool,
            **POOLS[pool],
        )
        wait_until(
            lambda: requests.get(
                f"{flower.url}/api/workers?refresh=1", auth=LOGIN, timeout=20
            ).json(),
            30,
            "Flower to see the worker",
        )
        simulator.script({"status": 503, "retry_after": RETRY_AFTER_S})
        request = GenerationRequest.model_validate(
            {
                "prompt": f"tell me about {canaries['prompt']}",
                "params": {"max_tokens": 16, "seed": 7},
                "metadata": {"customer": canaries["meta"]},
                "webhook_url": hook_url,
            }
        )
        producer = DirectProducer(Settings(redis_url=redis_url))
        task_id = producer.submit(request)
        producer.close()

        retried = wait_until(lambda: _retried_message(redis_client, task_id), 15, "the retry")
        result = celery_client.AsyncResult(task_id).get(timeout=30)
        output = result["text"]
        assert len(output.split()) == 16
        shown = dict(canaries, output=output, hook_url=hook_url)

        wait_until(lambda: len(receiver.hits) >= 2, 30, "the retried webhook")
        info = wait_until(
            lambda: (t := _flower_task(flower.url, task_id)) and t["state"] == "SUCCESS" and t,
            15,
            "Flower to see the success",
        )
        assert info["retries"] >= 1
        everything = requests.get(f"{flower.url}/api/tasks", auth=LOGIN, timeout=10).json()
        hooks = [t for t in everything.values() if t["name"] == "genqueue.webhook"]
        wait_until(
            lambda: any(
                (t := _flower_task(flower.url, h["uuid"])) and t["state"] == "SUCCESS"
                for h in hooks
            ),
            15,
            "Flower to see the webhook's success",
        )
        hook_info = _flower_task(flower.url, hooks[0]["uuid"])
        assert hook_info is not None and hook_info["retries"] >= 1
        texts = {
            "/api/tasks": requests.get(f"{flower.url}/api/tasks", auth=LOGIN, timeout=10).text,
            "the task's info": json.dumps(_flower_task(flower.url, task_id)),
            "the webhook's info": json.dumps(hook_info),
            "the task page": requests.get(
                f"{flower.url}/task/{task_id}", auth=LOGIN, timeout=10
            ).text,
        }

    leaks = []
    for where, text in texts.items():
        leaks += _leaks(shown, where, text)
    saved = b"".join(path.read_bytes() for path in (tmp_path / "flower-data").glob("flower.db*"))
    assert saved, "Flower saved no state"
    leaks += _leaks(shown, "flower.db", saved)
    leaks += _leaks(shown, "the retried message", _outside_body(retried))
    assert leaks == []
    # What Flower shows instead: the summaries.
    assert info["result"] == repr({"finish_reason": result["finish_reason"], "chars": len(output)})
    shown_request = payload_summary(request.to_payload())
    assert json.loads(shown_request) == {"template": "(default)", "endpoint": "(default)",
                                         "chars": len(request.prompt or "")}  # fmt: skip
    assert info["kwargs"] == retried["headers"]["kwargsrepr"] == shown_request
    assert (info["args"], retried["headers"]["argsrepr"]) == ("()", "()")
    assert hook_info["kwargs"] == f"{{'task_id': {task_id!r}, 'host': '127.0.0.1'}}"
    # The retried message still carries the whole request in its body.
    body = base64.b64decode(retried["body"])
    assert canaries["prompt"].encode() in body


@pytest.mark.parametrize("how", ["keyword", "positional"])
def test_a_retry_of_a_plain_celery_message_carries_the_summary(
    redis_url, redis_client, simulator, start_worker, celery_client: Celery, how: str
) -> None:
    # A plain Celery client sends no kwargsrepr: Celery writes the full repr into its message,
    # out of genqueue's reach. The worker's retry of it carries the summary instead.
    canaries = _canaries()
    payload = {"prompt": canaries["prompt"], "metadata": {"customer": canaries["meta"]}}
    start_worker(redis_url, simulator.url)
    simulator.script({"status": 503, "retry_after": RETRY_AFTER_S})
    if how == "keyword":
        sent = celery_client.send_task("genqueue.generate", kwargs={"request": payload})
    else:
        sent = celery_client.send_task("genqueue.generate", args=[payload])
    retried = wait_until(lambda: _retried_message(redis_client, sent.id), 15, "the retry")
    assert sent.get(timeout=30)["text"]
    assert _leaks(canaries, "the retried message", _outside_body(retried)) == []
    headers = retried["headers"]
    assert (headers["argsrepr"], headers["kwargsrepr"]) == ("()", payload_summary(payload))


def test_the_lost_message_sweep_sends_the_summary(redis_url, redis_client) -> None:
    canaries = _canaries()
    payload = {"prompt": canaries["prompt"], "metadata": {"customer": canaries["meta"]}}
    app = producer_celery(Settings(redis_url=redis_url))
    try:
        sender(app)("lost-task", payload, "genqueue", 0)
    finally:
        app.close()
    message = json.loads(redis_client.rpop("genqueue"))
    assert message["headers"]["id"] == "lost-task"
    assert _leaks(canaries, "the message", _outside_body(message)) == []
    assert message["headers"]["kwargsrepr"] == payload_summary(payload)
