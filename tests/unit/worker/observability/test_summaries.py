"""The summaries Flower shows of a task's arguments and result: lengths and names only."""

from __future__ import annotations

import json

import pytest

from worker.observability.flower_summaries import (
    payload_summary,
    request_summary,
    result_summary,
    webhook_summary,
)

SECRET = "s3cret-value"


def test_a_prompt_is_shown_by_its_length() -> None:
    payload = {
        "prompt": f"about {SECRET}",
        "template": "llama2",
        "endpoint": "gpu-a",
        "params": {"max_tokens": 5, "stop": [SECRET]},
        "metadata": {"user": SECRET},
        "webhook_url": f"https://hooks.example.com/x?token={SECRET}",
    }
    shown = payload_summary(payload)
    assert json.loads(shown) == {"template": "llama2", "endpoint": "gpu-a", "chars": 18}
    assert SECRET not in shown


def test_messages_are_counted() -> None:
    payload = {
        "messages": [{"role": "user", "content": SECRET}, {"role": "assistant", "content": "ok"}],
        "system": "be brief",
    }
    assert json.loads(payload_summary(payload)) == {
        "template": "(default)",
        "endpoint": "(default)",
        "messages": 2,
        "chars": len(SECRET) + 2,
        "system_chars": 8,
    }


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"template": f"{SECRET} {{{{ x }}}}", "prompt": 3}, {"template": "(invalid)", "chars": 0}),
        ({"endpoint": f"../{SECRET}", "messages": [SECRET, 4]}, {"endpoint": "(invalid)"}),
        ({"template": ["a"], "prompt": "x"}, {"template": "(invalid)", "chars": 1}),
    ],
)
def test_an_invalid_request_shows_no_text(payload: dict, expected: dict) -> None:
    shown = payload_summary(payload)
    assert SECRET not in shown
    assert expected.items() <= json.loads(shown).items()


def test_the_call_shapes_a_worker_receives() -> None:
    payload = {"prompt": SECRET}
    assert request_summary((), {"request": payload}) == payload_summary(payload)
    assert request_summary((payload,), {}) == payload_summary(payload)
    assert json.loads(request_summary((SECRET,), {})) == {"request": "(not a JSON object: str)"}
    odd = request_summary((SECRET,), {"request": payload, "other": SECRET})
    assert SECRET not in odd and json.loads(odd) == {"arguments": "(1 positional, 2 keyword)"}


def test_a_webhook_shows_its_host_only() -> None:
    shown = webhook_summary("t-1", f"https://hooks.example.com/{SECRET}?token={SECRET}")
    assert shown == "{'task_id': 't-1', 'host': 'hooks.example.com'}"
    assert webhook_summary("t-1", None) == "{'task_id': 't-1', 'host': None}"


def test_a_result_shows_how_it_ended_and_its_length() -> None:
    result = {"text": SECRET, "finish_reason": "stop", "usage": {"total_tokens": 3}}
    assert result_summary(result) == "{'finish_reason': 'stop', 'chars': 12}"
    assert result_summary({"text": SECRET, "finish_reason": SECRET * 5}) == (
        "{'finish_reason': None, 'chars': 12}"
    )
    assert result_summary([SECRET]) == "(list)"
