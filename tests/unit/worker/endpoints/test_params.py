"""Sampler parameters by server kind, endpoint URLs with or without /v1."""

from __future__ import annotations

import pytest

from worker.contract import GenerationRequest
from worker.endpoints.config import Endpoints, EndpointSpec
from worker.endpoints.params import for_server, refused, request_problem


def test_common_names_are_translated_for_each_kind() -> None:
    params = {"repetition_penalty": 1.1, "grammar": 'root ::= "a"', "top_k": 5}
    assert for_server("llamacpp", params, 512) == {
        "repeat_penalty": 1.1, "grammar": "root ::= \"a\"", "top_k": 5, "max_tokens": 512,
    }  # fmt: skip
    assert for_server("textgen", {"repeat_penalty": 1.1}, 64) == {
        "repetition_penalty": 1.1, "max_tokens": 64,
    }  # fmt: skip
    # vLLM takes a grammar only inside ``structured_outputs`` (its ``guided_grammar`` is gone).
    assert refused("vllm", ["grammar", "guided_grammar"]) == ["grammar", "guided_grammar"]
    assert for_server("textgen", {"grammar": "g"}, 64)["grammar_string"] == "g"


def test_max_tokens_is_always_sent_and_a_given_one_kept() -> None:
    assert for_server("openai", {}, 512) == {"max_tokens": 512}
    assert for_server("openai", {"max_tokens": 7}, 512) == {"max_tokens": 7}


@pytest.mark.parametrize(
    ("kind", "names", "expected"),
    [
        ("llamacpp", ["repetition_penalty", "typical_p", "top_k"], ["typical_p"]),
        ("textgen", ["typical_p", "repeat_penalty", "min_p"], []),
        ("openai", ["top_k", "temperature", "seed"], ["top_k"]),
        ("vllm", ["top_k", "min_p", "mirostat_mode"], ["mirostat_mode"]),
        ("runpod-serverless", ["repetition_penalty", "typical_p"], ["typical_p"]),
    ],
)
def test_parameters_a_kind_does_not_take(kind: str, names: list[str], expected: list[str]) -> None:
    assert refused(kind, names) == expected


def _endpoints(**specs: EndpointSpec) -> Endpoints:
    return Endpoints(dict(specs), next(iter(specs)))


def test_request_problem_checks_the_endpoint_and_its_fallbacks() -> None:
    endpoints = _endpoints(
        big=EndpointSpec(name="big", url="http://a", fallbacks=("small",)),
        small=EndpointSpec(name="small", kind="llamacpp", url="http://b"),
        loose=EndpointSpec(name="loose", kind="openai", url="http://c", strict_params=False),
    )
    fine = GenerationRequest(prompt="x", params={"top_k": 3, "repetition_penalty": 1.1})
    assert request_problem(endpoints, fine) is None
    bad = GenerationRequest(prompt="x", params={"typical_p": 0.9})
    assert request_problem(endpoints, bad) == (
        "endpoint 'small' (kind llamacpp) does not take params.typical_p; a server of that kind "
        "would ignore it (set strict_params = false on the endpoint to send it anyway)"
    )
    loose = GenerationRequest(prompt="x", endpoint="loose", params={"anything": 1})
    assert request_problem(endpoints, loose) is None


@pytest.mark.parametrize("kind", ["textgen", "openai", "vllm", "llamacpp"])
@pytest.mark.parametrize("url", ["http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"])
def test_every_kind_takes_a_url_with_or_without_v1(kind: str, url: str) -> None:
    spec = EndpointSpec(name="e", kind=kind, url=url)  # type: ignore[arg-type]
    assert spec.url_for(chat=False) == "http://h:1/v1/completions"
    assert spec.url_for(chat=True) == "http://h:1/v1/chat/completions"


def test_runpod_openai_route_by_endpoint_id() -> None:
    for kind in ("openai", "vllm"):
        spec = EndpointSpec(name="e", kind=kind, endpoint_id="xyz")  # type: ignore[arg-type]
        assert spec.url_for(chat=False) == "https://api.runpod.ai/v2/xyz/openai/v1/completions"
