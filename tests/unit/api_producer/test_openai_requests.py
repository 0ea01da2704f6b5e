"""api_producer/openai_requests.py on its own: an OpenAI body becomes a task's request, or a
400 naming its field; nothing is dropped in silence."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from api_producer.openai_format import OpenAIError
from api_producer.openai_requests import ChatBody, CompletionBody, describe, to_request

pytestmark = pytest.mark.timeout(10)
USER = [{"role": "user", "content": "Hi"}]


def chat(**fields: Any) -> ChatBody:
    return ChatBody.model_validate({"model": "m", "messages": USER, **fields})


def refused(
    model: type[ChatBody] | type[CompletionBody], body: dict[str, Any]
) -> tuple[str, str | None]:
    with pytest.raises(ValidationError) as err:
        model.model_validate({"model": "m", **body})
    return describe(err.value.errors(include_input=False, include_url=False))


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        ({"prompt": "x", "n": 3}, "n: genqueue generates one choice per request", "n"),
        ({"prompt": "x", "stream_options": {}}, "stream_options: only with stream: true",
         "stream_options"),
        ({"prompt": "x", "stream": False, "stream_options": {"include_usage": True}},
         "stream_options: only with stream: true", "stream_options"),
        ({"prompt": "x", "logprobs": 0}, "logprobs: genqueue does not return log probabilities",
         "logprobs"),
        ({"prompt": "x", "echo": True}, "echo: genqueue does not echo the prompt", "echo"),
        ({"prompt": ["a", "b"]}, "prompt: genqueue takes one prompt per request", "prompt"),
        ({"prompt": "x", "min_p": float("nan")}, "min_p: must be a finite number", "min_p"),
        ({"prompt": "x", "stop": [1.0, float("inf")]}, "stop: must be a finite number", "stop"),
        ({"prompt": "x", "stream": "sometimes"},
         "stream: Input should be a valid boolean, unable to interpret input", "stream"),
    ],
)  # fmt: skip
def test_a_refusal_is_in_words_naming_its_param(body, message, param) -> None:
    assert refused(CompletionBody, body) == (message, param)


def test_nulls_are_absent_and_user_is_not_sent_on() -> None:
    body = CompletionBody.model_validate(
        {"model": "m", "prompt": "x", "n": None, "stream": None, "echo": None, "logprobs": None,
         "logprobs_extra": None, "user": "u-1", "suffix": "end", "logit_bias": {"1": -1}}
    )  # fmt: skip
    request = to_request(body, "m", 5)
    assert request.stream is False
    assert request.to_payload()["params"] == {"suffix": "end", "logit_bias": {"1": -1}}


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
         "messages[0].content[0]"),
        ({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
         "messages[0].content[0]"),
        ({"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
         "messages[0].tool_calls"),
        ({"role": "user", "content": "x", "name": "alice"}, "messages[0].name"),
        ({"role": "tool", "content": "x", "tool_call_id": "1"}, "messages[0]"),
    ],
)  # fmt: skip
def test_a_message_genqueue_cannot_send_whole_is_refused(message, param) -> None:
    with pytest.raises(OpenAIError) as err:
        to_request(chat(messages=[message]), None, 5)
    assert err.value.status == 400 and err.value.param == param
    assert err.value.body()["error"]["param"] == param


def test_text_parts_are_joined_and_null_fields_of_a_message_ignored() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    user = {"role": "user", "content": parts, "name": None, "refusal": None}
    body = chat(messages=[{"role": "developer", "content": "S"}, user])
    request = to_request(body, None, 5)
    assert [(m.role, m.content) for m in request.messages or []] == [
        ("system", "S"),
        ("user", "ab"),
    ]
    assert request.chat is True


def test_max_completion_tokens_is_max_tokens() -> None:
    request = to_request(chat(max_completion_tokens=7), None, 5)
    assert request.params.max_tokens == 7
