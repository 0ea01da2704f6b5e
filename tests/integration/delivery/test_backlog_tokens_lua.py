"""The backlog fair by tokens (worker/delivery/scripts/lib/backlog_fair_order.lua through the fetch
script, against a real Redis): a message's turn costs its estimated tokens, read from its task's
record or its body, so tenants are served equal tokens rather than equal tasks."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import redis
from redis.commands.core import Script

from tests.integration.delivery.test_backlog_lua import QUEUE, _celery, _push
from worker import keys, lua
from worker.contract import GenerationRequest, request_tokens_estimate
from worker.delivery import backlog, broker, records

DEFAULT_MAX = 64


@pytest.fixture
def fetch(redis_client: redis.Redis) -> Script:
    return lua.register(redis_client, "worker.delivery", "fetch")


def _take(script: Script, want: int, token_queues: str = QUEUE) -> list[str]:
    reply = script(
        keys=[broker.UNACKED_KEY, broker.UNACKED_INDEX_KEY, keys.unreadable(), QUEUE],
        args=[want, 1.0, broker.UNREADABLE_MAX, backlog.DEFAULT_TENANT, "", token_queues,
              DEFAULT_MAX],
    )  # fmt: skip
    return [reply[i + 2].decode() for i in range(0, len(reply), 3)]


def _sort(client: redis.Redis, token_queues: str = QUEUE) -> None:
    """Sort the queue's list into its backlog, as a worker whose window is full does."""
    script = lua.register(client, "worker.delivery", "backlog_sort")
    script(
        keys=[keys.unreadable(), QUEUE],
        args=[backlog.SORT_MAX, broker.UNREADABLE_MAX, backlog.DEFAULT_TENANT, "", token_queues],
    )


def _sized(tenant: str, tag: str, prompt_tokens: int) -> str:
    """A plain Celery message whose request costs ``prompt_tokens`` + 1 (max_tokens 1)."""
    request = {"prompt": "x" * (prompt_tokens * 4), "tenant": tenant, "params": {"max_tokens": 1}}
    return _celery(tag, [], {"request": request})


@pytest.mark.parametrize("source", ["body", "record"])
def test_turns_go_in_inverse_proportion_to_cost(
    fetch: Script, redis_client: redis.Redis, source: str
) -> None:
    # a: 4,000-token turns; b: 100-token turns; the same weight.
    messages = []
    for n in range(5):
        messages.append(_sized("a", f"a{n:03}", 3999))
    for n in range(100):
        messages.append(_sized("b", f"b{n:03}", 99))
    if source == "record":  # a genqueue producer's record says the estimate: the body is not read
        messages = [_celery(m, [], {"request": {"prompt": "hi"}}) for m in
                    [f"a{n:03}" for n in range(5)] + [f"b{n:03}" for n in range(100)]]  # fmt: skip
        for tag in [f"a{n:03}" for n in range(5)] + [f"b{n:03}" for n in range(100)]:
            redis_client.hset(keys.task_record(tag), mapping={
                records.F_TENANT: tag[0], records.F_ESTIMATE: 4000 if tag[0] == "a" else 100,
            })  # fmt: skip
    _push(redis_client, *messages)
    _sort(redis_client)
    order = _take(fetch, 64) + _take(fetch, 18)
    # 40 of b's for each of a's (counters: the least served first), each tenant's oldest first.
    assert Counter(tag[0] for tag in order) == {"a": 2, "b": 80}
    assert [tag for tag in order if tag[0] == "a"] == ["a000", "a001"]


def test_fair_by_tasks_the_same_messages_alternate(
    fetch: Script, redis_client: redis.Redis
) -> None:
    _push(redis_client, *(_sized("a", f"a{n}", 3999) for n in range(5)))
    _push(redis_client, *(_sized("b", f"b{n}", 99) for n in range(5)))
    _sort(redis_client, token_queues="")
    assert _take(fetch, 10, token_queues="") == [
        f"{t}{n}" for n in range(5) for t in ("a", "b")
    ]  # as before: a turn is a task


def test_only_the_lists_of_the_queues_named_take_turns_by_tokens(
    fetch: Script, redis_client: redis.Redis
) -> None:
    _push(redis_client, *(_sized("a", f"a{n}", 3999) for n in range(3)))
    _push(redis_client, *(_sized("b", f"b{n}", 99) for n in range(3)))
    _sort(redis_client, token_queues="another-queue\ngenqueue")
    assert _take(fetch, 4, token_queues="another-queue\ngenqueue") == ["a0", "b0", "a1", "b1"]
    # A priority step's list ("<queue>\x06\x16<step>") is its queue's.
    step = keys.queue_list(QUEUE, 3)
    for message in [*(_sized("a", f"a{n}", 3999) for n in range(3)),
                    *(_sized("b", f"b{n}", 99) for n in range(3))]:  # fmt: skip
        redis_client.lpush(step, message)
    script = lua.register(redis_client, "worker.delivery", "backlog_sort")
    script(keys=[keys.unreadable(), step], args=[100, 100, "internal", "", QUEUE])
    reply = fetch(
        keys=[broker.UNACKED_KEY, broker.UNACKED_INDEX_KEY, keys.unreadable(), step],
        args=[4, 1.0, broker.UNREADABLE_MAX, "internal", "", QUEUE, DEFAULT_MAX],
    )
    assert [reply[i + 2].decode() for i in range(0, len(reply), 3)] == ["a0", "b0", "b1", "b2"]


def test_the_worker_names_its_queues_fair_by_tokens() -> None:
    assert backlog.fairness_args() == ("", 512)  # none: every backlog by tasks
    backlog.use_fairness([QUEUE, "genqueue"], 100)
    try:
        assert backlog.fairness_args() == (f"{QUEUE}\ngenqueue", 100)
    finally:
        backlog.use_fairness([], 512)


@pytest.mark.parametrize(
    "request_fields",
    [
        {"prompt": "hello world, " * 30},
        {"prompt": "héllo wörld ✓ " * 7, "params": {"max_tokens": 300}},
        {"prompt": "p", "system": "be brief " * 11},
        {
            "messages": [
                {"role": "user", "content": "ab" * 33},
                {"role": "assistant", "content": "c"},
            ]
        },
    ],
)
def test_a_plain_celery_messages_cost_is_the_estimate_of_its_request(
    fetch: Script, redis_client: redis.Redis, request_fields: dict[str, Any]
) -> None:
    request = {**request_fields, "tenant": "a"}
    expected = request_tokens_estimate(GenerationRequest.model_validate(request), DEFAULT_MAX)
    later = {"prompt": "", "tenant": "a"}
    _push(
        redis_client, _celery("a0", [], {"request": request}), _celery("a1", [], {"request": later})
    )
    _sort(redis_client)
    _take(fetch, 1)
    # The tenant's counter moved on by the first message's cost (from the clock, 0).
    assert redis_client.zscore(keys.backlog_tenants(QUEUE), "a") == expected


def test_a_tenant_starts_from_the_clock_no_credit_for_its_absence(
    fetch: Script, redis_client: redis.Redis
) -> None:
    _push(redis_client, *(_sized("a", f"a{n}", 99) for n in range(6)))
    _sort(redis_client)
    assert _take(fetch, 3) == ["a0", "a1", "a2"]  # a alone: its counter is 300, the clock 200
    _push(redis_client, *(_sized("b", f"b{n}", 99) for n in range(3)))
    _sort(redis_client)
    # b starts at the clock (200), not at 0: it does not get three turns in a row.
    assert _take(fetch, 4) == ["b0", "a3", "b1", "a4"]
