"""api_producer.script_replies: the rate and token scripts' replies, decoded by name."""

from __future__ import annotations

from api_producer import script_replies as replies


def test_a_rate_charge_is_the_count_or_refused() -> None:
    assert replies.rate_charge(4) == replies.RateCharge(4)
    assert not replies.rate_charge(4).refused
    assert replies.rate_charge(-1).refused


def test_a_token_hold_says_whether_it_held_and_what_is_used() -> None:
    assert replies.token_reserve([1, 900]) == replies.TokenHold(held=True, used=900)
    assert replies.token_reserve([0, 1200]) == replies.TokenHold(held=False, used=1200)
