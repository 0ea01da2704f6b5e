"""Pure pieces of tenants: the token estimate, the day's reset, a message's tenant."""

from __future__ import annotations

import pytest

from api_producer.quota import estimate, seconds_to_midnight, utc_day
from worker.contract import GenerationRequest
from worker.tenants import INTERNAL, Tenants, key_tenant, tenant_of_message


@pytest.mark.parametrize(
    ("fields", "tokens"),
    [
        ({"prompt": "abcd", "params": {"max_tokens": 40}}, 41),
        ({"prompt": "abcde", "params": {"max_tokens": 1}}, 3),  # 5 characters: 2 tokens
        ({"prompt": "ab", "system": "cd"}, 1 + 512),  # no max_tokens: the default
        ({"messages": [{"role": "user", "content": "x" * 8}], "params": {"max_tokens": 2}}, 4),
    ],
)
def test_estimate(fields: dict, tokens: int) -> None:
    assert estimate(GenerationRequest.model_validate(fields), default_max_tokens=512) == tokens


@pytest.mark.parametrize(
    ("now_s", "left_s", "day"),
    [
        (1_798_761_600.0, 86_400, "2027-01-01"),  # midnight exactly: a whole day
        (1_798_761_600.0 + 86_399.5, 1, "2027-01-01"),
        (1_798_761_600.0 - 0.25, 1, "2026-12-31"),
        (1_798_761_600.0 + 3_600, 82_800, "2027-01-01"),
    ],
)
def test_the_budget_resets_at_utc_midnight(now_s: float, left_s: int, day: str) -> None:
    assert seconds_to_midnight(now_s) == left_s
    assert utc_day(now_s) == day


@pytest.mark.parametrize(
    ("args", "kwargs", "tenant"),
    [
        ((), {"request": {"prompt": "x", "tenant": "billing"}}, "billing"),
        (({"prompt": "x", "tenant": "billing"},), {}, "billing"),
        ((), {"request": {"prompt": "x"}}, INTERNAL),
        ((), {"request": {"tenant": "not a name!"}}, INTERNAL),
        ((), {"request": "not an object"}, INTERNAL),
    ],
)
def test_a_messages_tenant(args: tuple, kwargs: dict, tenant: str) -> None:
    assert tenant_of_message(args, kwargs) == tenant


def test_unknown_tenants_weigh_one_and_key_tenants_are_digest_prefixes() -> None:
    assert Tenants().weight_of("anyone") == 1.0
    assert key_tenant("test-key-1").startswith("key-") and len(key_tenant("x")) == 12
