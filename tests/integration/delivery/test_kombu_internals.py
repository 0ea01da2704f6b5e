"""What genqueue relies on in kombu, Celery and redis-py beyond their public API still holds.

Each failure names the installed releases, the tested ones and what changed: an upgrade of kombu,
Celery or redis-py that breaks what genqueue copies or the Redis formats it reads and writes fails
here, not in production (docs/development.md, upgrading kombu, Celery or redis-py). The formats
are checked against a real Redis with kombu's own transport (not genqueue's), so they are kombu's.
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
import redis
from celery import Celery
from celery.app.task import Task
from celery.app.trace import trace_ok_t
from celery.backends.base import BaseBackend
from celery.backends.redis import RedisBackend
from kombu.transport import redis as kombu_redis
from kombu.utils.imports import symbol_by_name
from packaging.requirements import Requirement

from api_producer.producers.celery_message import MessageBuilder
from genqueue.embedded_redis import free_port
from tests.conftest import ROOT
from worker import keys, upstream
from worker.contract import PRIORITY_MAX, TASK_NAME
from worker.delivery import broker
from worker.delivery.lost_message_sweep import _unacked_task_ids
from worker.delivery.task_scripts import celery_meta
from worker.keys import queue_bindings, queue_list

QUEUE = "internals-test"
TIMEOUT_S = 10
#: What genqueue's Celery app sets (worker.celery_app.celery_config).
TRANSPORT_OPTIONS = {
    "priority_steps": list(range(PRIORITY_MAX + 1)),
    "queue_order_strategy": "priority",
}


def loudly(what: str) -> str:
    return (
        f"{upstream.versions_line()}: {what}. Re-read the code that relies on it and see "
        f"{upstream.UPGRADE_PAGE}"
    )


@pytest.fixture
def stock(redis_url: str) -> Iterator[kombu.Connection]:
    """A connection through kombu's own Redis transport, set up as genqueue's workers are."""
    with kombu.Connection(
        redis_url, transport=kombu_redis.Transport, transport_options=TRANSPORT_OPTIONS
    ) as conn:
        yield conn


def _take(conn: kombu.Connection, count: int) -> tuple[Any, list[Any]]:
    """Take ``count`` messages from QUEUE without acknowledging them."""
    received: list[Any] = []
    channel = conn.channel()
    channel.basic_qos(0, count, False)
    consumer = kombu.Consumer(
        channel,
        [kombu.Queue(QUEUE, routing_key=QUEUE)],
        callbacks=[lambda _body, message: received.append(message)],
    )
    consumer.consume()
    deadline = time.monotonic() + TIMEOUT_S
    while len(received) < count and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.2)
    assert len(received) == count, loudly(f"kombu delivered {len(received)} of {count} messages")
    return channel, received


def _publish(conn: kombu.Connection, priority: int = 0) -> None:
    queue = kombu.Queue(QUEUE, routing_key=QUEUE)
    with conn.Producer() as producer:
        producer.publish({"p": priority}, routing_key=QUEUE, declare=[queue], priority=priority)


def test_the_methods_genqueue_copies_are_those_it_was_written_against() -> None:
    found = upstream.all_changes()
    assert not found, loudly("; ".join(found))


def test_the_tested_releases_are_within_the_pinned_ranges() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = {
        requirement.name: requirement.specifier
        for requirement in map(Requirement, pyproject["project"]["dependencies"])
    }
    for name, version in upstream.TESTED.items():
        assert version in pins[name], f"worker.upstream.TESTED {name} {version} not in {pins[name]}"
        installed = upstream.installed()[name]
        assert installed in pins[name], loudly(f"{name} {installed} is outside {pins[name]}")
        # The pin admits the tested minor release only: what `pip install .` resolves is it.
        major, minor, _ = (int(part) for part in version.split("."))
        for other in (f"{major}.{minor + 1}.0", f"{major + 1}.0.0", f"{major}.{minor - 1}.0"):
            assert other not in pins[name], f"pyproject.toml's {name}{pins[name]} admits {other}"


def test_the_page_the_warning_names_says_how_to_upgrade() -> None:
    page, _, section = upstream.UPGRADE_PAGE.partition(" ")
    headings = (ROOT / page).read_text().splitlines()
    assert "## " + section.strip("()'") in headings
    assert upstream.UPGRADE_PAGE == "docs/development.md ('Upgrading kombu, Celery or redis-py')"


def test_a_changed_copy_is_named_and_a_worker_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def _brpop_read(self: Any, **options: Any) -> None:  # a kombu release that changed it
        return None

    monkeypatch.setattr(kombu_redis.Channel, "_brpop_read", _brpop_read)
    with caplog.at_level(logging.WARNING, logger=upstream.__name__):
        found = upstream.report()

    assert len(found) == 1
    assert found[0].startswith(
        "kombu.transport.redis:Channel._brpop_read, which worker.delivery.broker copies or "
        "overrides, has changed"
    )
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    said = record.getMessage()
    assert said.startswith("kombu changed what genqueue relies on: kombu.transport.redis:Channel.")
    assert f"tested with kombu {upstream.TESTED['kombu']}" in said
    assert "Channel._brpop_read" in said
    assert said.endswith(
        f"Install the tested release (pip install 'kombu=={upstream.TESTED['kombu']}'), or see "
        "docs/development.md ('Upgrading kombu, Celery or redis-py') to upgrade"
    )


def test_a_changed_redis_py_is_named_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    def discover_master(self: Any, service_name: str) -> None:  # a redis-py that changed it
        return None

    monkeypatch.setattr(redis.sentinel.Sentinel, "discover_master", discover_master)
    said = upstream.warning(upstream.all_changes())

    assert said is not None
    assert said.startswith(
        "redis-py changed what genqueue relies on: redis.sentinel:Sentinel.discover_master, "
        "which worker.redis_io.redis_sentinel copies or overrides, has changed"
    )
    assert f"(pip install 'redis=={upstream.TESTED['redis']}')" in said
    assert "kombu or Celery" not in said
    assert upstream.warning([]) is None


def test_kombu_records_a_taken_message_as_genqueue_reads_it(
    stock: kombu.Connection, redis_client: redis.Redis, celery_client: Celery
) -> None:
    celery_client.send_task(TASK_NAME, kwargs={"request": {}}, task_id="t-1", queue=QUEUE)
    raw = json.loads(redis_client.lindex(QUEUE, -1))  # type: ignore[arg-type]
    channel, [message] = _take(stock, 1)

    assert (channel.unacked_key, channel.unacked_index_key) == (
        broker.UNACKED_KEY,
        broker.UNACKED_INDEX_KEY,
    ), loudly("kombu's unacked key names changed")
    entry = redis_client.hget(broker.UNACKED_KEY, message.delivery_tag)
    # What the fetch script (worker/delivery/scripts/fetch.lua) writes, and the lost-message
    # sweep reads.
    assert entry is not None and json.loads(entry) == [raw, "", QUEUE], loudly(
        f"kombu's QoS.append no longer writes [message, exchange, routing_key]: {entry!r}"
    )
    assert _unacked_task_ids(redis_client, broker.UNACKED_KEY) == {"t-1"}
    score = redis_client.zscore(broker.UNACKED_INDEX_KEY, message.delivery_tag)
    assert score is not None and abs(score - time.time()) < TIMEOUT_S, loudly(
        f"kombu's unacked_index no longer holds the time a message was taken: {score!r}"
    )
    # The heartbeat renews the scores of these tags (worker.delivery.heartbeat).
    assert list(channel.qos._delivered) == [message.delivery_tag], loudly("QoS._delivered")

    message.ack()  # what the task end script does in Redis: HDEL and ZREM, nothing else
    assert redis_client.keys("unacked*") == [], loudly("kombu's ack leaves more than it did")


def test_kombu_restores_an_abandoned_message_to_its_priority_list(
    stock: kombu.Connection, redis_client: redis.Redis, redis_url: str
) -> None:
    _publish(stock, priority=3)
    _take(stock, 1)
    [tag] = redis_client.zrange(broker.UNACKED_INDEX_KEY, 0, -1)
    redis_client.zadd(broker.UNACKED_INDEX_KEY, {tag: 1.0})  # its worker is long gone
    with kombu.Connection(
        redis_url, transport=kombu_redis.Transport, transport_options=TRANSPORT_OPTIONS
    ) as other:
        other.default_channel.qos.restore_visible(num=10, interval=1)

    back = redis_client.lrange(queue_list(QUEUE, 3), 0, -1)
    assert len(back) == 1, loudly(
        f"kombu's restore_visible no longer puts a message back on {queue_list(QUEUE, 3)!r}: "
        f"{redis_client.keys('*')}"
    )
    restored = json.loads(back[0])
    assert restored["properties"]["delivery_tag"] == tag.decode()
    assert restored["headers"]["redelivered"] is True
    assert redis_client.hlen(broker.UNACKED_KEY) == 0


def test_kombu_names_priority_lists_as_genqueue_does(
    stock: kombu.Connection, redis_client: redis.Redis
) -> None:
    for priority in range(PRIORITY_MAX + 1):
        _publish(stock, priority)
    lists = {key.decode() for key in redis_client.keys(f"{QUEUE}*")}

    expected = {queue_list(QUEUE, priority) for priority in range(PRIORITY_MAX + 1)}
    assert lists == expected == set(keys.queue_lists([QUEUE])), loudly(
        f"kombu's priority lists are {sorted(lists)}, genqueue expects {sorted(expected)}"
    )
    assert kombu_redis.Channel.sep == keys.PRIORITY_SEP


def test_a_queue_declaration_binds_it_as_the_producer_does(
    redis_client: redis.Redis, celery_client: Celery
) -> None:
    celery_client.send_task(TASK_NAME, kwargs={"request": {}}, queue=QUEUE)

    for key, member in queue_bindings(QUEUE):
        assert redis_client.smembers(key) == {member.encode()}, loudly(
            f"kombu's binding set {key!r} holds {redis_client.smembers(key)}, "
            f"worker.keys.queue_bindings names {member!r}"
        )


def test_the_envelope_genqueue_builds_has_celerys_fields(
    redis_client: redis.Redis, celery_client: Celery
) -> None:
    celery_client.send_task(
        TASK_NAME, kwargs={"request": {}}, task_id="t-2", queue=QUEUE, argsrepr="()", kwargsrepr="-"
    )
    sent = json.loads(redis_client.lindex(QUEUE, -1))  # type: ignore[arg-type]
    built = json.loads(
        MessageBuilder(celery_client, 0)
        .build("t-2", TASK_NAME, {"request": {}}, QUEUE, 0, "-")
        .message
    )

    for part in ("", "headers", "properties"):
        theirs, ours = (sent[part], built[part]) if part else (sent, built)
        assert set(theirs) == set(ours), loudly(
            f"Celery's message {part or 'envelope'} has fields {sorted(theirs)}, "
            f"api_producer.producers.celery_message builds {sorted(ours)} "
            "(tests/integration/api/test_wire.py compares them byte for byte)"
        )
    assert json.loads(base64.b64decode(sent["body"])) == json.loads(base64.b64decode(built["body"]))


def test_celery_reads_the_results_genqueue_writes(
    redis_client: redis.Redis, celery_client: Celery
) -> None:
    backend = celery_client.backend
    assert backend.get_key_for_task("t-3").decode() == keys.celery_result("t-3"), loudly(
        "Celery's result key is no longer celery-task-meta-<id>"
    )
    backend.store_result("t-3", {"text": "x"}, "SUCCESS")
    celerys = json.loads(redis_client.get(keys.celery_result("t-3")))  # type: ignore[arg-type]
    ours = json.loads(celery_meta("t-3", "SUCCESS", {"text": "x"}, done=True))
    assert set(celerys) == set(ours), loudly(
        f"Celery's result meta has {sorted(celerys)}, worker.delivery.task_scripts writes "
        f"{sorted(ours)}"
    )

    redis_client.set(keys.celery_result("t-4"), celery_meta("t-4", "SUCCESS", [1], done=True))
    result = celery_client.AsyncResult("t-4")
    assert (result.state, result.result) == ("SUCCESS", [1]), loudly("Celery reads genqueue's meta")


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_celery_calls_what_genqueue_overrides_as_it_expects() -> None:
    # worker.tasks wraps the tracer Celery sets on a task, and its backend's mark_as_done.
    assert Task.__trace__ is None, loudly("Celery's Task.__trace__ is gone")
    assert trace_ok_t._fields == ("retval", "info", "runtime", "retstr"), loudly("trace_ok_t")
    assert _parameters(BaseBackend.mark_as_done)[:6] == [
        "self",
        "task_id",
        "result",
        "request",
        "store_result",
        "state",
    ], loudly(f"BaseBackend.mark_as_done takes {_parameters(BaseBackend.mark_as_done)}")
    assert _parameters(Task.signature_from_request) == [
        "self",
        "request",
        "args",
        "kwargs",
        "queue",
        "extra_options",
    ], loudly("Task.signature_from_request's parameters changed")
    # worker.delivery.result_backend checks the size as Celery's set does.
    assert isinstance(RedisBackend._MAX_STR_VALUE_SIZE, int), loudly("_MAX_STR_VALUE_SIZE")


def test_kombu_and_redis_py_have_what_genqueue_uses(stock: kombu.Connection) -> None:
    channel = stock.default_channel
    used = [
        "sep", "_in_poll", "_queue_cycle", "priority_steps", "global_keyprefix", "unacked_key",
        "unacked_index_key", "unacked_restore_limit", "unacked_restore_throttle",
        "visibility_timeout", "_create_client", "_flush_brpop_reauth", "_q_for_pri", "pool",
        "active_queues", "connection_errors", "client",
    ]  # fmt: skip
    missing = [name for name in used if not hasattr(channel, name)]
    assert not missing, loudly(f"kombu's Redis channel no longer has {missing}")
    assert hasattr(channel._queue_cycle, "consume") and hasattr(channel._queue_cycle, "rotate")
    assert hasattr(channel.qos, "can_consume_max_estimate") and hasattr(channel.qos, "_delivered")
    assert hasattr(channel.connection, "_deliver"), loudly("kombu's Transport._deliver")
    assert "redis" in kombu.transport.TRANSPORT_ALIASES
    assert isinstance(kombu.transport._transport_cache, dict)

    client = channel.client
    script = client.register_script("return 1")
    # worker.delivery.broker and result_backend keep a script while its client stays the same.
    assert script.registered_client is client, loudly("redis-py's Script.registered_client")
    assert _parameters(client.parse_response)[:2] == ["connection", "command_name"], loudly(
        "redis-py's Redis.parse_response (worker.delivery.broker's BRPOP read)"
    )


#: Loaded by the worker's Python before anything else: a kombu whose _brpop_read changed.
CHANGED_KOMBU = """
from kombu.transport import redis


def _brpop_read(self, **options):
    raise AssertionError("genqueue overrides this")


redis.Channel._brpop_read = _brpop_read
"""


def test_a_worker_on_a_changed_kombu_says_so_and_starts(
    redis_url: str, simulator: Any, start_worker: Any, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CHANGED_KOMBU)
    pythonpath = f"{site}:{ROOT}"
    worker = start_worker(
        redis_url, simulator.url, pythonpath=pythonpath, genqueue_worker_pool="threads"
    )

    log = worker.log()
    assert "kombu.transport.redis:Channel._brpop_read, which worker.delivery.broker" in log
    assert f"genqueue was tested with kombu {upstream.TESTED['kombu']}" in log


@pytest.mark.timeout(180)
def test_genqueue_up_says_so_on_its_terminal(tmp_path: Path) -> None:
    """The worker's own warning goes to its log file under ``up``: ``up`` says it too."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CHANGED_KOMBU)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQUEUE_", "REDIS_"))}
    env["PYTHONPATH"] = f"{site}:{ROOT}"
    out = tmp_path / "up.out"
    argv = [sys.executable, "-m", "genqueue", "up", "--api-port", str(free_port())]
    argv += ["--flower-port", str(free_port())]
    with out.open("wb") as sink:
        process = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=sink, stderr=sink)
    try:
        # Stopped once it runs: a SIGTERM while the embedded Redis starts would leave it behind.
        deadline = time.monotonic() + 90
        while "genqueue up: running" not in out.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, out.read_text()
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    [line] = [line for line in out.read_text().splitlines() if "warning" in line]
    assert line.startswith(
        "genqueue up: warning: kombu changed what genqueue relies on: "
        "kombu.transport.redis:Channel._brpop_read, which worker.delivery.broker copies"
    ), line
    assert line.endswith("docs/development.md ('Upgrading kombu, Celery or redis-py') to upgrade")


def test_celery_buffers_task_events_as_genqueue_turns_it_on(celery_client: Celery) -> None:
    # worker.observability.flower_events sets these on the consumer's dispatcher, and
    # worker.celery_app and it name Celery's consumer steps they follow.
    for step in ("celery.worker.consumer.events:Events", "celery.worker.consumer.tasks:Tasks"):
        assert symbol_by_name(step).name == step.replace(":", "."), loudly(f"step {step}")
    with celery_client.connection_for_write() as conn:
        dispatcher = celery_client.events.Dispatcher(conn, enabled=True)
        dispatcher.buffer_group = frozenset({"task"})
        dispatcher.buffer_limit = 64
        dispatcher.send("task-received", uuid="t-5")
        assert len(dispatcher._group_buffer.get("task", [])) == 1, loudly(
            "Celery's EventDispatcher no longer buffers a group's events in _group_buffer"
        )
        dispatcher.flush(errors=True, groups=True)
        assert not dispatcher._group_buffer.get("task"), loudly("EventDispatcher.flush")
        dispatcher.close()
