"""The hand-built message and task-sent event are what Celery's own send_task writes."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import time

import pytest
import redis

from api_producer.producers.celery_message import MessageBuilder
from api_producer.producers.direct import DirectProducer, producer_celery
from api_producer.producers.enqueue import celery_priority, queue_of, summary
from worker import keys
from worker.contract import TASK_NAME, GenerationRequest
from worker.settings import Settings

REQUEST = {
    "prompt": 'Ünïcode and "quotes" and a long enough prompt to be cut in Flower\'s summary',
    "params": {"max_tokens": 16, "seed": 10},
    "metadata": {"user": "u-1", "tags": ["a", "b"]},
}
_TAG = re.compile(r'"delivery_tag": "[0-9a-f-]{36}"')
_CLOCK = re.compile(r'"clock": \d+')
_TIMESTAMP = re.compile(r'"timestamp": [0-9.e+-]+')


def _message_text(raw: bytes) -> tuple[str, str]:
    """The message without its delivery tag, and its decoded body."""
    text = raw.decode()
    body = base64.b64decode(json.loads(text)["body"]).decode()
    return _TAG.sub('"delivery_tag": "-"', text.replace(json.loads(text)["body"], "")), body


def _event_text(raw: bytes) -> tuple[str, str]:
    outer, body = _message_text(raw)
    return outer, _TIMESTAMP.sub('"timestamp": 0', _CLOCK.sub('"clock": 0', body))


def _published(pubsub: redis.client.PubSub) -> bytes:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            return bytes(message["data"])
    raise AssertionError("no task-sent event")


@pytest.mark.parametrize("priority", [9, 3, 0])
def test_message_and_event_match_celery(redis_url, redis_client, priority) -> None:
    request = GenerationRequest.model_validate(REQUEST | {"priority": priority})
    app = producer_celery(Settings(redis_url=redis_url))
    db = int(redis_url.rsplit("/", 1)[1])
    pubsub = redis_client.pubsub()
    pubsub.subscribe(keys.event_topic(db))
    pubsub.get_message(timeout=1)
    queue, celery_pri = queue_of(request), celery_priority(request)
    with app.producer_or_acquire() as producer:
        app.send_task(
            TASK_NAME,
            kwargs={"request": request.to_payload()},
            task_id="the-task",
            queue=queue,
            priority=celery_pri,
            argsrepr="()",
            kwargsrepr=summary(request),
            producer=producer,
        )
    celery_message = redis_client.rpop(keys.queue_list(queue, celery_pri))
    celery_event = _published(pubsub)
    assert redis_client.sismember(*keys.queue_bindings(queue)[0])

    out = MessageBuilder(app, db).build(
        "the-task",
        TASK_NAME,
        {"request": request.to_payload()},
        queue,
        celery_pri,
        summary(request),
    )
    assert out.topic == keys.event_topic(db)
    assert _message_text(out.message.encode()) == _message_text(celery_message)
    assert _event_text(out.event.encode()) == _event_text(celery_event)
    pubsub.close()
    app.close()


def test_one_submission_writes_record_message_and_event(redis_url, redis_client) -> None:
    settings = Settings(redis_url=redis_url)
    producer = DirectProducer(settings)
    request = GenerationRequest.model_validate(REQUEST | {"priority": 2})
    task_id = producer.submit(request)
    producer.close()
    record = redis_client.hgetall(keys.task_record(task_id))
    assert record[b"queue"] == b"genqueue" and record[b"priority"] == b"7"
    assert json.loads(record[b"payload"]) == request.to_payload()
    assert redis_client.zscore(keys.inbox(), task_id) is not None
    assert 0 < redis_client.ttl(keys.task_record(task_id)) <= settings.result_ttl_s
    raw = redis_client.lrange(keys.queue_list("genqueue", 7), 0, -1)
    assert len(raw) == 1 and json.loads(raw[0])["headers"]["id"] == task_id
    for key, member in keys.queue_bindings("genqueue"):
        assert redis_client.sismember(key, member)


def _commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}


@pytest.mark.parametrize(("tasks", "publishes"), [(5, 1), (150, 2)])
def test_a_batch_sends_its_task_sent_events_in_one_publish(
    redis_url, redis_client, tasks: int, publishes: int
) -> None:
    """Flower's receiver (Celery's EventReceiver) sees every task of a ``submit_many``, from one
    ``task.multi`` publish per 100 tasks instead of one publish per task."""
    app = producer_celery(Settings(redis_url=redis_url))
    seen: list[dict] = []
    requests = [GenerationRequest.model_validate(REQUEST)] * tasks
    producer = DirectProducer(Settings(redis_url=redis_url))
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"task-sent": seen.append})
        with receiver.consumer_context() as (conn, _, _):
            with contextlib.suppress(TimeoutError):  # kombu subscribes on its first read
                conn.drain_events(timeout=0.2)
            before = _commandstats(redis_client)
            task_ids = producer.submit_many(requests).task_ids
            after = _commandstats(redis_client)
            deadline = time.monotonic() + 5
            while len(seen) < len(task_ids) and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.5)
    producer.close()
    app.close()
    assert [event["uuid"] for event in seen] == task_ids
    assert all(event["name"] == TASK_NAME and event["queue"] == "genqueue" for event in seen)
    assert after["publish"] - before.get("publish", 0) == publishes
