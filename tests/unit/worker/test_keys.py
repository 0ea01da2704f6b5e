"""Every Redis key and queue name comes from worker/keys.py; the names stay the wire's."""

from __future__ import annotations

from kombu.transport.redis import Channel

from worker import keys
from worker.delivery import broker


def test_kombu_names_are_kombus() -> None:
    assert (Channel.unacked_key, Channel.unacked_index_key) == (keys.UNACKED, keys.UNACKED_INDEX)
    assert (broker.UNACKED_KEY, broker.UNACKED_INDEX_KEY) == (keys.UNACKED, keys.UNACKED_INDEX)


def test_queue_names() -> None:
    assert keys.queue_for(None) == "genqueue"
    assert keys.queue_for("fast") == "genqueue.fast"
    assert keys.all_queues(["fast", "slow"]) == [
        "genqueue",
        "celery",
        "genqueue.fast",
        "genqueue.slow",
    ]
    assert keys.queue_list("genqueue", 0) == "genqueue"
    assert keys.queue_list("genqueue", 3) == "genqueue\x06\x163"
    assert len(keys.queue_lists(["genqueue"])) == 10


def test_key_names_are_unchanged() -> None:
    assert keys.api_rate("abc", 7) == "genqueue:rate:abc:7"
    assert keys.EVENTS_STREAM == "genqueue:events"
    assert keys.event_topic(2) == "/2.celeryev/task.sent"
    assert keys.queue_bindings("genqueue")[0] == (
        "_kombu.binding.genqueue",
        "genqueue\x06\x16\x06\x16genqueue",
    )
