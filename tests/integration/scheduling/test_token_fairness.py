"""Fair by tokens with a real worker (docs/scheduling.md): two tenants, one sending long prompts
and one short, share a one-slot endpoint by tokens served, not by tasks, when the operator sets
GENQUEUE_FAIRNESS=tokens. Plain Celery sends the tasks, and the worker's window holds them all:
the admission queue orders them by their cost (tasks still in Redis come into a full window one
per ended call, and get about one call in two while they do: docs/scheduling.md, Limits; the
backlog's order by cost is tests/integration/delivery/test_backlog_tokens_lua.py's). The
simulator counts a word a token, and the prompts are words of four characters, so its usage and
genqueue's estimate (four characters a token) agree."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.scheduling.test_backlog_fairness import send_many
from tests.integration.scheduling.test_scheduling import finish_order

pytestmark = pytest.mark.timeout(120)

LONG, SHORT = 8, 160  # about 16,000 tokens each


def requests_of(tenant: str, words: int, count: int) -> list[dict[str, Any]]:
    prompt = "abc " * words
    return [{"prompt": prompt, "tenant": tenant, "params": {"max_tokens": 4}} for _ in range(count)]


def test_tenants_with_long_and_short_prompts_get_equal_tokens(
    redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    simulator.configure(latency_s=0.01)
    start_worker(
        redis_url, simulator.url, RUNPOD_MAX_CONCURRENCY=1, GENQUEUE_WORKER_CONCURRENCY=200,
        GENQUEUE_FAIRNESS="tokens",
    )  # fmt: skip
    # The long prompts' backlog first, the short ones behind it.
    sent = send_many(celery_client, requests_of("long", 2000, LONG))
    sent += send_many(celery_client, requests_of("short", 100, SHORT))
    usage = {}
    for result in sent:
        answer = result.get(timeout=90)
        usage[result.id] = answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
    tenant = {result.id: ("long" if n < LONG else "short") for n, result in enumerate(sent)}

    order = finish_order(redis_client)
    assert sorted(order) == sorted(tenant)
    # While both had work: up to the last task of the first tenant to run out.
    last = {name: max(i for i, task in enumerate(order) if tenant[task] == name) for name in
            ("long", "short")}  # fmt: skip
    window = order[: min(last.values()) + 1]
    tokens = {name: sum(usage[t] for t in window if tenant[t] == name) for name in last}
    tasks = {name: sum(1 for t in window if tenant[t] == name) for name in last}
    share = tokens["long"] / (tokens["long"] + tokens["short"])
    # Near equal tokens (measured: 0.50; one long task is an eighth of its side's). Fair by
    # tasks, the long prompts alternate with the short ones and take 0.94 of the tokens.
    assert 0.3 <= share <= 0.7, (share, tokens, tasks, window)
    # So the short prompts get many turns for each long one (about 20: the inverse of the cost).
    assert tasks["short"] >= 8 * max(1, tasks["long"] - 1), tasks
