"""Only JSON crosses the broker: pickle and YAML messages are refused, never executed."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis
from kombu import Connection

from tests.integration.security.helpers import redis_contents
from worker import keys

pytestmark = pytest.mark.timeout(90)

#: The endpoint must never be called for these; a pickle body could as well run code.
REQUEST = {"prompt": "serialized with a forbidden codec", "params": {"max_tokens": 4}}


def _publish(redis_url: str, serializer: str) -> str:
    """A ``genqueue.generate`` message in Celery protocol 2, straight onto the queue."""
    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py",
        "task": "genqueue.generate",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": "()",
        "kwargsrepr": "{'request': ...}",
        "origin": "test@security",
        "ignore_result": False,
    }
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body: Any = ((), {"request": REQUEST}, embed)
    with Connection(redis_url) as connection:
        producer = connection.Producer(serializer=serializer)
        producer.publish(
            body,
            routing_key="genqueue",
            headers=headers,
            correlation_id=task_id,
            delivery_mode=2,
            retry=False,
        )
    return task_id


def _drained(client: redis.Redis, timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.llen("genqueue") == 0 and client.hlen("unacked") == 0:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize(
    ("serializer", "content_type"),
    [("pickle", "application/x-python-serialize"), ("yaml", "application/x-yaml")],
)
def test_non_json_messages_are_refused(
    redis_url, redis_client, simulator, start_worker, celery_client, serializer, content_type
) -> None:
    worker = start_worker(redis_url, simulator.url)
    refused = [_publish(redis_url, serializer) for _ in range(3)]
    assert _drained(redis_client), "the refused messages stayed in the queue"
    time.sleep(0.5)
    assert simulator.stats()["calls"] == 0
    assert worker.process.poll() is None, "the worker died"
    log = worker.log()
    assert content_type in log
    assert f"untrusted content of type {serializer}" in log
    # Refused messages leave no result, no record and nothing to redeliver.
    keys = redis_contents(redis_client)
    for task_id in refused:
        assert not any(task_id.encode() in key for key in keys)
    # The same worker still serves a JSON task.
    result = celery_client.send_task("genqueue.generate", kwargs={"request": REQUEST})
    assert result.get(timeout=30)["usage"]["completion_tokens"] == 4
    assert simulator.stats()["calls"] == 1


def test_json_message_of_the_wrong_shape_fails_once(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    start_worker(redis_url, simulator.url)
    result = celery_client.send_task(
        "genqueue.generate", kwargs={"request": "__import__('os').system('id')"}
    )
    with pytest.raises(Exception, match="must be a JSON object") as info:
        result.get(timeout=30)
    assert type(info.value).__name__ != "TimeoutError"
    time.sleep(0.5)
    assert simulator.stats()["calls"] == 0
    record = redis_client.hgetall(f"genqueue:task:{result.id}")
    assert b'"type": "invalid_request"' in record[b"error"]


GARBAGE = [b"not json at all", b'{"x": 1}', b"[1, 2]", b"\xff\xfe"]


@pytest.mark.parametrize("when", ["before the worker starts", "while it waits"])
def test_messages_that_are_not_kombus_are_set_aside_and_the_worker_goes_on(
    redis_url, redis_client, simulator, start_worker, celery_client, when
) -> None:
    # Before the start, the worker finds a backlog (its fetch script); while it waits on an
    # empty queue, BRPOP hands them over one by one.
    if when == "before the worker starts":
        redis_client.lpush("genqueue", *GARBAGE)
    worker = start_worker(redis_url, simulator.url)
    if when == "while it waits":
        redis_client.lpush("genqueue", *GARBAGE)

    deadline = time.monotonic() + 15
    while redis_client.llen(keys.unreadable()) < len(GARBAGE) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(redis_client.lrange(keys.unreadable(), 0, -1)) == sorted(GARBAGE)
    assert redis_client.llen("genqueue") == 0
    result = celery_client.send_task("genqueue.generate", kwargs={"request": REQUEST})
    assert result.get(timeout=30)["usage"]["completion_tokens"] == 4
    assert worker.process.poll() is None, "the worker died"
    log = worker.log()
    assert log.count("is not a kombu message") == len(GARBAGE)
    assert "exited with" not in log and "Connection to broker lost" not in log
