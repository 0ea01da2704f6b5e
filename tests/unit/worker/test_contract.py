"""Table tests for worker.contract.GenerationRequest and
worker.pipeline.generation.parse_payload."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from worker.contract import (
    METADATA_MAX_CHARS,
    METADATA_MAX_KEYS,
    GenerationRequest,
    _compact_json,
)
from worker.errors import InvalidRequest
from worker.pipeline.payload import describe_errors, parse_payload

USER = {"role": "user", "content": "hi"}


def errors_of(raw: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        GenerationRequest.model_validate(raw)
    return describe_errors(info.value)


# --- valid requests --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        {"prompt": "hi"},
        {"prompt": ""},
        {"prompt": "hi", "system": "s", "template": "llama2", "priority": 0},
        {"messages": [{"role": "system", "content": "s"}, USER], "priority": 9},
        {"prompt": "hi", "metadata": {"job": 1, "tags": ["a"], "nested": {"x": None}}},
        {"prompt": "hi", "endpoint": "small", "chat": True, "params": {"max_tokens": 3}},
    ],
    ids=["prompt", "empty-prompt", "prompt+system", "messages", "metadata", "endpoint+chat"],
)
def test_valid_requests_round_trip(raw: dict[str, Any]) -> None:
    """The payload holds what the producer set, no defaults: the worker applies those."""
    request = GenerationRequest.model_validate(raw)
    assert request.to_payload() == raw
    assert GenerationRequest.model_validate(request.to_payload()) == request


# --- exactly one input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({}, "give exactly one of 'prompt' or 'messages'"),
        ({"template": "raw"}, "give exactly one of 'prompt' or 'messages'"),
        ({"prompt": "a", "messages": [USER]}, "give exactly one of 'prompt' or 'messages'"),
        ({"prompt": None, "messages": None}, "give exactly one of 'prompt' or 'messages'"),
        ({"messages": [USER], "system": "s"}, "'system' goes with 'prompt'"),
    ],
    ids=["neither", "neither-with-template", "both", "both-null", "messages+system"],
)
def test_exactly_one_input(raw: dict[str, Any], reason: str) -> None:
    message = errors_of(raw)
    assert message.startswith("request: Value error, ")
    assert reason in message


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"messages": []}, "messages: "),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role: "),
        ({"messages": [{"role": "user"}]}, "messages.0.content: "),
        ({"messages": [{"role": "user", "content": "x", "name": "n"}]}, "messages.0.name: "),
        ({"prompt": "x", "template": "../etc/passwd"}, "template: "),
        ({"prompt": "x", "template": ""}, "template: "),
        ({"prompt": 5}, "prompt: "),
    ],
    ids=["no-messages", "bad-role", "no-content", "extra-message-field", "path", "empty", "int"],
)
def test_field_errors_name_the_field(raw: dict[str, Any], where: str) -> None:
    assert errors_of(raw).startswith(where)


@pytest.mark.parametrize("field", ["n", "model", "callback_url", "Prompt", "max_tokens"])
def test_unknown_top_level_field_refused(field: str) -> None:
    assert errors_of({"prompt": "x", field: 1}) == f"{field}: Extra inputs are not permitted"


# --- priority --------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", [0, 1, 5, 9])
def test_priority_in_range(priority: int) -> None:
    assert GenerationRequest(prompt="x", priority=priority).priority == priority


@pytest.mark.parametrize(
    ("priority", "reason"),
    [
        (-1, "priority: Input should be greater than or equal to 0"),
        (10, "priority: Input should be less than or equal to 9"),
        (255, "priority: Input should be less than or equal to 9"),
        ("high", "priority: Input should be a valid integer"),
        (1.5, "priority: Input should be a valid integer"),
    ],
)
def test_priority_out_of_range(priority: object, reason: str) -> None:
    assert errors_of({"prompt": "x", "priority": priority}).startswith(reason)


# --- params ----------------------------------------------------------------------------------


def test_extra_sampler_params_are_kept() -> None:
    params = {
        "max_tokens": 16,
        "temperature": 0.7,
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "stop": ["\n"],
        "logit_bias_ids": [1, 2, 3],
        "ignore_eos": False,
        "grammar": None,
    }
    request = GenerationRequest(prompt="x", params=params)  # type: ignore[arg-type]
    assert request.to_payload()["params"] == {
        "max_tokens": 16,
        "temperature": 0.7,
        "top_k": 40,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "stop": ["\n"],
        "logit_bias_ids": [1, 2, 3],
        "ignore_eos": False,
    }  # exclude_none: a null extra is dropped like a null typed field


@pytest.mark.parametrize("key", ["stream", "prompt", "model", "messages", "n", "echo"])
def test_reserved_params_refused(key: str) -> None:
    message = errors_of({"prompt": "x", "params": {key: True}})
    assert message == f"params: Value error, params.{key} is set by genqueue and cannot be given"


@pytest.mark.parametrize(
    "value", [{}, {"a": 1}, {"nested": {"deep": True}}], ids=["empty", "flat", "deep"]
)
def test_params_nested_object_refused(value: dict[str, Any]) -> None:
    message = errors_of({"prompt": "x", "params": {"top_k": value}})
    assert message == "params: Value error, params.top_k must be a scalar or a list, not an object"


def test_the_object_params_are_taken_as_objects() -> None:
    params = {"logit_bias": {"50256": -100}, "response_format": {"type": "json_object"}}
    request = GenerationRequest.model_validate({"prompt": "x", "params": params})
    assert request.to_payload()["params"] == params


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1.0, float("-inf")]])
def test_a_non_finite_number_is_refused_not_stored_as_null(value: Any) -> None:
    assert errors_of({"prompt": "x", "params": {"top_k": value}}) == (
        "params: Value error, params.top_k must be a finite number"
    )
    assert errors_of({"prompt": "x", "params": {"temperature": float("nan")}}) == (
        "params.temperature: Input should be a finite number"
    )


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"max_tokens": 0}, "params.max_tokens: Input should be greater than or equal to 1"),
        ({"max_tokens": -1}, "params.max_tokens: Input should be greater than or equal to 1"),
        ({"max_tokens": 32_769}, "params.max_tokens: Input should be less than or equal to 32768"),
        ({"temperature": -0.1}, "params.temperature: "),
        ({"temperature": 5.1}, "params.temperature: "),
        ({"top_p": 1.5}, "params.top_p: "),
        ({"stop": 5}, "params.stop"),
    ],
)
def test_typed_params_bounds(params: dict[str, Any], where: str) -> None:
    assert errors_of({"prompt": "x", "params": params}).startswith(where)


@pytest.mark.parametrize("max_tokens", [1, 32_768])
def test_max_tokens_bounds_accepted(max_tokens: int) -> None:
    request = GenerationRequest(prompt="x", params={"max_tokens": max_tokens})  # type: ignore[arg-type]
    assert request.to_payload()["params"] == {"max_tokens": max_tokens}


# --- metadata --------------------------------------------------------------------------------


def test_metadata_key_limit() -> None:
    at_limit = {f"k{i}": i for i in range(METADATA_MAX_KEYS)}
    assert GenerationRequest(prompt="x", metadata=at_limit).metadata == at_limit
    over = {f"k{i}": i for i in range(METADATA_MAX_KEYS + 1)}
    assert errors_of({"prompt": "x", "metadata": over}) == (
        "metadata: Value error, metadata has more than 32 keys"
    )


def filler(total_chars: int) -> dict[str, str]:
    """A one-key metadata object whose compact JSON is exactly ``total_chars`` long."""
    overhead = len(_compact_json({"k": ""}))
    value = {"k": "v" * (total_chars - overhead)}
    assert len(_compact_json(value)) == total_chars
    return value


def test_metadata_size_limit() -> None:
    at_limit = filler(METADATA_MAX_CHARS)
    assert GenerationRequest(prompt="x", metadata=at_limit).metadata == at_limit
    assert errors_of({"prompt": "x", "metadata": filler(METADATA_MAX_CHARS + 1)}) == (
        "metadata: Value error, metadata is larger than 4096 characters as JSON"
    )


def test_metadata_size_counts_characters_not_bytes() -> None:
    value = {"k": "é" * (METADATA_MAX_CHARS - 8)}  # 2 bytes each in UTF-8, 1 char
    assert len(_compact_json(value)) == METADATA_MAX_CHARS
    assert GenerationRequest(prompt="x", metadata=value).metadata == value


# --- describe_errors -------------------------------------------------------------------------


def test_describe_errors_joins_every_problem_without_the_input() -> None:
    secret_prompt = "PRIVATE-PROMPT-TEXT " * 100
    message = errors_of(
        {"prompt": secret_prompt, "priority": 99, "params": {"max_tokens": 0}, "bogus": 1}
    )
    assert message == (
        "params.max_tokens: Input should be greater than or equal to 1; "
        "priority: Input should be less than or equal to 9; "
        "bogus: Extra inputs are not permitted"
    )
    assert "PRIVATE" not in message


# --- parse_payload ---------------------------------------------------------------------------

RAW = {"prompt": "hi", "priority": 3, "params": {"top_k": 5}}
EXPECTED = GenerationRequest.model_validate(RAW)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((), {"request": RAW}), ((RAW,), {})],
    ids=["kwargs-request", "one-positional"],
)
def test_parse_payload_accepted_shapes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    request = parse_payload(args, kwargs)
    assert request == EXPECTED
    assert request.to_payload()["params"] == {"top_k": 5}


def test_parse_payload_accepts_a_to_payload_dict() -> None:
    request = GenerationRequest(messages=[USER], template="raw")  # type: ignore[list-item]
    assert parse_payload((), {"request": request.to_payload()}) == request


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "got 0 positional and keyword []"),
        ((RAW, RAW), {}, "got 2 positional and keyword []"),
        ((RAW,), {"request": RAW}, "got 1 positional and keyword ['request']"),
        (
            (),
            {"request": RAW, "priority": 1},
            "got 0 positional and keyword ['priority', 'request']",
        ),
        ((), {"prompt": "hi"}, "got 0 positional and keyword ['prompt']"),
        ((), {"req": RAW}, "got 0 positional and keyword ['req']"),
    ],
    ids=["nothing", "two-positional", "both", "extra-kwarg", "flat-kwargs", "misspelt"],
)
def test_parse_payload_wrong_shape(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_payload(args, kwargs)
    assert info.value.message == (
        "genqueue.generate takes one keyword argument 'request' (a JSON object); " + message
    )
    assert info.value.error_type == "invalid_request"


@pytest.mark.parametrize(
    ("raw", "kind"),
    [("hi", "str"), (["hi"], "list"), (None, "NoneType"), (5, "int")],
)
def test_parse_payload_request_not_an_object(raw: object, kind: str) -> None:
    for args, kwargs in (((), {"request": raw}), ((raw,), {})):
        with pytest.raises(InvalidRequest) as info:
            parse_payload(args, kwargs)
        assert info.value.message == f"'request' must be a JSON object, not {kind}"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "invalid request: request: Value error, give exactly one of 'prompt' or 'messages'"),
        ({"prompt": "x", "priority": 10}, "invalid request: priority: Input should be less"),
        (
            {"prompt": "x", "params": {"stream": True}},
            "invalid request: params: Value error, params.stream is set by genqueue",
        ),
        ({"prompt": "x", "extra": 1}, "invalid request: extra: Extra inputs are not permitted"),
    ],
)
def test_parse_payload_invalid_request(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_payload((), {"request": raw})
    assert info.value.message.startswith(message)
    assert info.value.__cause__ is None  # `from None`: no pydantic echo of the input
