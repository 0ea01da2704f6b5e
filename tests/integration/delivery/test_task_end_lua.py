"""worker/delivery/scripts/task_end.lua on its own, against a real Redis (through
worker.delivery.task_scripts.Lifecycle.finish: tests/integration/delivery/test_lifecycle.py)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from redis.commands.core import Script

from worker import keys, lua

TASK, EP, TAG = "t1", "ep", "tag-1"
RECORD, RESULT, RUNNING = keys.task_record(TASK), keys.celery_result(TASK), keys.running(TASK)
EVENTS, UNACKED, INDEX, INBOX = "genqueue:events", "unacked", "unacked_index", keys.inbox()
LEASE, BREAKER, PROBE, RATE = (
    keys.lease(EP),
    keys.breaker(EP),
    keys.breaker_probe(EP),
    keys.rate(EP),
)
TENANT, DAY = "acme", "2026-01-01"
USAGE, TENANTS, TOTALS, RESERVED = (
    keys.usage(TENANT, DAY),
    keys.usage_tenants(DAY),
    keys.usage_totals(),
    keys.reserved_tokens(TENANT),
)
SUCCESS = json.dumps({"status": "SUCCESS", "result": {"text": "hi"}, "task_id": TASK})
ERROR = json.dumps({"type": "endpoint_timeout", "message": "too slow"})


@pytest.fixture
def end(redis_client: redis.Redis) -> Script:
    return lua.register(redis_client, "worker.delivery", "task_end")


@pytest.fixture
def held(redis_client: redis.Redis) -> None:
    """A task that ran here: its record, claim, message and inbox entry."""
    redis_client.hset(RECORD, mapping={"attempts": 2, "created_at": "then"})
    redis_client.set(RUNNING, "claim-1")
    redis_client.zadd(INDEX, {TAG: 1.0})
    redis_client.hset(UNACKED, TAG, "[message]")
    redis_client.zadd(INBOX, {TASK: 1.0})


def _end(
    script: Script,
    status: str = "succeeded",
    release: tuple[str, int] | None = None,
    tokens: tuple[int, int, int] = (0, 0, 0),
    success_apart: bool = False,
) -> list[Any]:
    succeeded = status == "succeeded"
    meta = SUCCESS if succeeded and not success_apart else ""
    script_keys = [RECORD, EVENTS, RESULT, RUNNING, INDEX, UNACKED, INBOX]
    script_keys += [USAGE, TENANTS, TOTALS, RESERVED]
    args: list[Any] = [
        600, 100, TASK, status, "" if succeeded else "endpoint_timeout", "2026-01-01T00:00:01",
        "" if succeeded else ERROR, 300, meta, "1" if success_apart else "", "claim-1", TAG,
        TENANT, EP, *tokens, 3600,
    ]  # fmt: skip
    if release is not None:
        outcome, threshold = release
        script_keys += [LEASE, BREAKER, PROBE, RATE]
        args += [
            "slot-1",
            outcome,
            threshold,
            "30000:60000",
            7,
        ]  # token, outcome, threshold, cooldown (first_ms:max_ms), tokens
    return script(keys=script_keys, args=args)


def _acknowledged(client: redis.Redis) -> bool:
    return not client.exists(INDEX, UNACKED) and client.zscore(INBOX, TASK) is None


def _stream(client: redis.Redis) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in client.xrange(EVENTS)]


@pytest.mark.usefixtures("held")
def test_a_success_is_stored_acknowledged_and_announced(
    end: Script, redis_client: redis.Redis
) -> None:
    assert _end(end) == [None, b"2", b"then"]

    assert redis_client.hget(RECORD, "finished_at") == b"2026-01-01T00:00:01"
    assert redis_client.hget(RECORD, "error") is None
    assert 590 <= redis_client.ttl(RECORD) <= 600
    assert redis_client.get(RESULT) == SUCCESS.encode()
    assert 290 <= redis_client.ttl(RESULT) <= 300
    assert redis_client.exists(RUNNING) == 0
    assert _acknowledged(redis_client)
    assert _stream(redis_client) == [
        {
            b"task_id": TASK.encode(),
            b"status": b"succeeded",
            b"error_type": b"",
            b"finished_at": b"2026-01-01T00:00:01",
            b"attempts": b"2",
        }
    ]


@pytest.mark.usefixtures("held")
def test_a_failure_records_its_error_and_stores_no_result(
    end: Script, redis_client: redis.Redis
) -> None:
    _end(end, status="failed")

    assert redis_client.hget(RECORD, "error") == ERROR.encode()
    assert redis_client.exists(RESULT) == 0
    assert _acknowledged(redis_client)
    assert _stream(redis_client)[0][b"error_type"] == b"endpoint_timeout"


@pytest.mark.usefixtures("held")
def test_a_claim_held_by_another_worker_is_left_alone(
    end: Script, redis_client: redis.Redis
) -> None:
    redis_client.set(RUNNING, "another-worker")
    _end(end, status="failed")
    assert redis_client.get(RUNNING) == b"another-worker"


@pytest.mark.usefixtures("held")
def test_a_success_cancelled_meanwhile_is_neither_stored_nor_acknowledged(
    end: Script, redis_client: redis.Redis
) -> None:
    redis_client.hset(RECORD, "cancel_requested", "1")

    assert _end(end) == [b"1", b"2", b"then"]

    assert redis_client.exists(RESULT) == 0
    assert redis_client.hget(UNACKED, TAG) == b"[message]"
    assert redis_client.zscore(INBOX, TASK) == 1.0
    assert _stream(redis_client) == []
    # The caller ends it again, cancelled: that end is final.
    _end(end, status="cancelled")
    assert _acknowledged(redis_client)
    assert [e[b"status"] for e in _stream(redis_client)] == [b"cancelled"]


@pytest.mark.usefixtures("held")
def test_a_replayed_success_gets_no_second_stream_entry(
    end: Script, redis_client: redis.Redis
) -> None:
    _end(end)
    redis_client.zadd(INDEX, {TAG: 1.0})
    redis_client.hset(UNACKED, TAG, "[message]")
    _end(end)
    assert _acknowledged(redis_client)
    assert len(_stream(redis_client)) == 1


def test_no_delivery_tag_leaves_the_broker_entries(end: Script, redis_client: redis.Redis) -> None:
    redis_client.hset(UNACKED, TAG, "[message]")
    args = [600, 100, TASK, "failed", "x", "now", "", 300, "", "", "", "", TENANT, EP, 0, 0, 0, 60]
    end(keys=[RECORD, EVENTS, RESULT, RUNNING, INDEX, UNACKED, INBOX, USAGE, TENANTS, TOTALS,
              RESERVED], args=args)  # fmt: skip
    assert redis_client.hget(UNACKED, TAG) == b"[message]"
    assert redis_client.hget(RECORD, "finished_at") == b"now"


@pytest.mark.usefixtures("held")
def test_a_successful_calls_slot_is_released_and_the_breaker_closed(
    end: Script, redis_client: redis.Redis
) -> None:
    redis_client.zadd(LEASE, {"slot-1": time.time() * 1000 + 30_000, "other": 1e15})
    redis_client.hset(BREAKER, "failures", 3)
    redis_client.hset(RATE, mapping={"w": 0, "r": 1, "t": 0})

    _end(end, release=("ok", 5))

    assert redis_client.zrange(LEASE, 0, -1) == [b"other"]
    # Closed: no failures counted, nothing open; the success is counted as served.
    assert redis_client.hgetall(BREAKER) == {b"served": b"1"}
    assert redis_client.hget(RATE, "t") == b"7"


@pytest.mark.usefixtures("held")
def test_a_failed_calls_release_counts_towards_opening_the_breaker(
    end: Script, redis_client: redis.Redis
) -> None:
    redis_client.zadd(LEASE, {"slot-1": 1e15})
    _end(end, status="failed", release=("failure", 1))
    open_until = int(redis_client.hget(BREAKER, "open_until"))
    assert 25_000 < open_until - time.time() * 1000 <= 30_000
    assert redis_client.zcard(LEASE) == 0


def test_the_guards_function_is_included_not_copied() -> None:
    text = lua.source("worker.delivery", "task_end")
    assert "#include" not in text
    assert lua.library("worker.limits", "slot_give_back") in text
    assert text.count("local function release_slot(") == 1


# --------------------------------------------------------------------------- usage


@pytest.mark.usefixtures("held")
def test_usage_is_counted_once_however_often_the_end_runs(
    end: Script, redis_client: redis.Redis
) -> None:
    for _ in range(3):  # a redelivered message, a replayed result
        _end(end, tokens=(10, 20, 1500))

    assert redis_client.hgetall(USAGE) == {
        b"ep:succeeded": b"1",
        b"ep:prompt_tokens": b"10",
        b"ep:completion_tokens": b"20",
        b"ep:gpu_ms": b"1500",
        b"total_tokens": b"30",
    }
    assert 0 < redis_client.ttl(USAGE) <= 3600
    assert redis_client.smembers(TENANTS) == {TENANT.encode()}
    assert redis_client.hget(TOTALS, f"{TENANT}|{EP}|completion") == b"20"


@pytest.mark.usefixtures("held")
def test_a_failure_counts_as_a_failed_task_without_tokens(
    end: Script, redis_client: redis.Redis
) -> None:
    _end(end, status="failed")
    assert redis_client.hgetall(USAGE) == {b"ep:failed": b"1"}


@pytest.mark.usefixtures("held")
def test_the_end_settles_the_reservation_of_the_submission(
    end: Script, redis_client: redis.Redis
) -> None:
    redis_client.hset(RECORD, mapping={"reserved_tokens": 500, "reserved_day": "2025-12-31"})
    redis_client.hset(RESERVED, mapping={"2025-12-31": 800})

    _end(end, tokens=(10, 20, 0))
    _end(end, tokens=(10, 20, 0))

    assert redis_client.hget(RESERVED, "2025-12-31") == b"300"
    assert redis_client.hget(RECORD, "reserved_tokens") is None
    assert redis_client.hget(USAGE, "total_tokens") == b"30"


@pytest.mark.usefixtures("held")
def test_a_success_found_cancelled_is_counted_by_the_cancelled_end(
    end: Script, redis_client: redis.Redis
) -> None:
    redis_client.hset(RECORD, "cancel_requested", "1")
    _end(end, tokens=(10, 20, 0))
    assert redis_client.exists(USAGE) == 0
    _end(end, status="cancelled")
    assert redis_client.hgetall(USAGE) == {b"ep:cancelled": b"1"}


# --------------------------------------------------------------------------- cost


def _commands_run(client: redis.Redis, action: Any) -> dict[str, int]:
    """The commands Redis ran (script calls included) while ``action`` ran, per name."""

    def calls() -> dict[str, int]:
        stats = client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}

    before = calls()
    action()
    after = calls()
    changed = {name: n - before.get(name, 0) for name, n in after.items()}
    return {name: n for name, n in changed.items() if n and name not in ("info", "evalsha")}


@pytest.mark.usefixtures("held")
def test_a_success_costs_one_read_of_the_record(end: Script, redis_client: redis.Redis) -> None:
    """Every command of the end script is paid for by every task (docs/redis.md)."""
    _end(end)  # loads the script (the first EVALSHA falls back to EVAL)
    redis_client.hdel(RECORD, "finished_at")
    counted = _commands_run(redis_client, lambda: _end(end))
    assert counted.get("hget", 0) + counted.get("hmget", 0) == 1
    assert counted.get("hset") == 1
    assert _stream(redis_client)[-1][b"status"] == b"succeeded"


@pytest.mark.usefixtures("held")
def test_a_failure_writes_its_end_and_error_at_once(end: Script, redis_client: redis.Redis) -> None:
    _end(end, "failed")
    redis_client.hdel(RECORD, "finished_at", "error")
    counted = _commands_run(redis_client, lambda: _end(end, "failed"))
    assert counted.get("hget", 0) + counted.get("hmget", 0) == 1
    assert counted.get("hset") == 1
    record = redis_client.hgetall(RECORD)
    assert record[b"finished_at"] == b"2026-01-01T00:00:01"
    assert json.loads(record[b"error"]) == json.loads(ERROR)


@pytest.mark.usefixtures("held")
def test_a_success_stored_apart_is_acknowledged_and_wins_over_a_late_cancel(
    end: Script, redis_client: redis.Redis
) -> None:
    """GENQUEUE_RESULT_REDIS_URL: the caller stored the success in the results' Redis first;
    this script writes no result here, and a cancellation asked meanwhile came too late."""
    redis_client.hset(RECORD, "cancel_requested", "1")

    assert _end(end, success_apart=True) == [None, b"2", b"then"]

    assert redis_client.exists(RESULT) == 0
    assert _acknowledged(redis_client)
    assert [e[b"status"] for e in _stream(redis_client)] == [b"succeeded"]
    assert redis_client.hget(RECORD, "finished_at") == b"2026-01-01T00:00:01"
