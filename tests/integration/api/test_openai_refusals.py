"""What the OpenAI routes refuse, and how: a call refused after it was charged gives the charge
back, and every refusal is OpenAI's error shape, naming the field."""

from __future__ import annotations

import pytest
import requests

from tests.integration.api.conftest import API_KEY
from tests.integration.tenants.conftest import write_tenants
from worker.tenancy.tenants import hash_key

pytestmark = pytest.mark.timeout(60)
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def post(url: str, body: dict, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(
        f"{url}/v1/completions", json=body, headers={**AUTH, **(headers or {})}, timeout=10
    )


def test_a_call_refused_after_its_charge_is_refunded(redis_url, api_factory, tmp_path) -> None:
    # No worker: an accepted call waits 0.2 s, then answers 504 (the task stays queued).
    api = api_factory(redis_url, api_rate_limit_per_minute=2, api_openai_wait_s=0.2)
    key = {"Idempotency-Key": "k"}
    assert post(api.url, {"model": "default", "prompt": "a"}, key).status_code == 504
    for _ in range(3):  # the same key with another body: refused, and not counted
        conflict = post(api.url, {"model": "default", "prompt": "b"}, key)
        assert conflict.status_code == 409, conflict.text
        assert conflict.json()["error"]["code"] == "idempotency_conflict"
    assert post(api.url, {"model": "default", "prompt": "c"}).status_code == 504
    limited = post(api.url, {"model": "default", "prompt": "d"})
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_call_over_the_token_budget_is_refunded(redis_url, api_factory, tmp_path) -> None:
    key = "metered-key"
    tenants = write_tenants(
        tmp_path / "tenants.toml",
        f'[tenants.metered]\nkey_hashes = ["{hash_key(key)}"]\ntokens_per_day = 100\n'
        "requests_per_minute = 1\n",
    )
    api = api_factory(redis_url, api_keys="", tenants_file=tenants, api_openai_wait_s=0.2)
    auth = {"Authorization": f"Bearer {key}"}
    for _ in range(2):
        over = post(api.url, {"model": "default", "prompt": "a", "max_tokens": 200}, auth)
        assert over.status_code == 429 and over.json()["error"]["code"] == "quota_exceeded"
    fits = post(api.url, {"model": "default", "prompt": "a", "max_tokens": 10}, auth)
    assert fits.status_code == 504, fits.text  # charged once: the one request this minute


def error_of(answer: requests.Response) -> dict:
    assert answer.status_code == 400, answer.text
    error: dict = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert not error["message"].startswith(("body", "Value error")), error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"stream_options": {"include_usage": True}}, "stream_options", "only with stream"),
        ({"n": 2}, "n", "one choice"),
        ({"echo": True}, "echo", "echo"),
        ({"top_k": float("inf")}, "top_k", "finite"),
        ({"top_k": float("nan")}, "top_k", "finite"),
        ({"temperature": float("nan")}, "temperature", "finite"),
        ({"temperature": 6}, "temperature", "5"),
        ({"logit_bias": {"50256": -100}, "top_p": "x"}, "top_p", "number"),
    ],
)
def test_a_refusal_names_its_field(redis_url, api_factory, body, param, words) -> None:
    api = api_factory(redis_url, api_openai_wait_s=0.2)
    raw = requests.models.complexjson.dumps({"model": "default", "prompt": "x", **body})
    answer = requests.post(
        f"{api.url}/v1/completions", data=raw, timeout=10,
        headers={**AUTH, "Content-Type": "application/json"},
    )  # fmt: skip
    error = error_of(answer)
    assert error["param"] == param
    assert words in error["message"]


def test_null_n_and_stream_are_taken_as_absent(redis_url, api_factory, redis_client) -> None:
    api = api_factory(redis_url, api_openai_wait_s=0.2)
    answer = post(api.url, {"model": "default", "prompt": "x", "n": None, "stream": None})
    assert answer.status_code == 504, answer.text  # accepted: no worker runs it
    answer = requests.post(
        f"{api.url}/v1/chat/completions", headers=AUTH, timeout=10,
        json={"model": "default", "messages": [{"role": "user", "content": "x"}],
              "n": None, "stream": None, "stream_options": None},
    )  # fmt: skip
    assert answer.status_code == 504, answer.text


def test_the_answer_names_the_endpoint_that_served(
    redis_url, simulator, start_worker, api_factory, tmp_path
) -> None:
    endpoints = tmp_path / "endpoints.toml"
    endpoints.write_text(
        '[endpoints.dead]\nurl = "http://127.0.0.1:9"\nfallbacks = ["main"]\n'
        f'[endpoints.main]\nurl = "{simulator.url}"\n'
    )
    fast = {"GENQUEUE_RETRY_BASE_DELAY_S": 0.1, "GENQUEUE_RETRY_MAX_DELAY_S": 0.2}
    start_worker(
        redis_url, "", GENQUEUE_ENDPOINTS_FILE=str(endpoints), GENQUEUE_RETRY_MAX_ATTEMPTS=2, **fast
    )
    api = api_factory(redis_url, endpoints_file=endpoints, runpod_endpoint_url=None)
    answer = post(api.url, {"model": "dead", "prompt": "x", "max_tokens": 2})
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "main"
    streamed = requests.post(
        f"{api.url}/v1/completions", headers=AUTH, timeout=30, stream=True,
        json={"model": "dead", "prompt": "x", "max_tokens": 2, "stream": True,
              "stream_options": {"include_usage": True}},
    )  # fmt: skip
    chunks = [
        requests.models.complexjson.loads(line[len(b"data: "):])
        for line in streamed.iter_lines() if line.startswith(b"data: {")
    ]  # fmt: skip
    assert chunks[-1]["usage"] is not None and chunks[-1]["model"] == "main"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        ]}]}, "messages[0].content[1]"),
        ({"messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        ]}, "messages[1].tool_calls"),
        ({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ],
)  # fmt: skip
def test_a_chat_field_genqueue_cannot_honour_is_refused_by_name(
    redis_url, api_factory, body, param
) -> None:
    api = api_factory(redis_url, api_openai_wait_s=0.2)
    answer = requests.post(
        f"{api.url}/v1/chat/completions", json={"model": "default", **body}, headers=AUTH,
        timeout=10,
    )  # fmt: skip
    error = error_of(answer)
    assert error["param"] == param and param in error["message"]


def test_completion_logprobs_zero_is_refused_false_is_not(redis_url, api_factory) -> None:
    api = api_factory(redis_url, api_openai_wait_s=0.2)
    assert (
        error_of(post(api.url, {"model": "default", "prompt": "x", "logprobs": 0}))["param"]
        == "logprobs"
    )
    assert post(api.url, {"model": "default", "prompt": "x", "logprobs": None}).status_code == 504


def test_suffix_logit_bias_and_response_format_reach_the_server(
    redis_url, simulator, start_worker, api_factory, tmp_path
) -> None:
    endpoints = tmp_path / "endpoints.toml"
    endpoints.write_text(
        f'[endpoints.webui]\nkind = "textgen"\nurl = "{simulator.url}"\n'
        f'[endpoints.vllm]\nkind = "vllm"\nurl = "{simulator.url}"\n'
    )
    start_worker(redis_url, "", GENQUEUE_ENDPOINTS_FILE=str(endpoints))
    api = api_factory(redis_url, endpoints_file=endpoints, runpod_endpoint_url=None)
    bias = {"50256": -100}
    answer = post(api.url, {"model": "webui", "prompt": "x", "max_tokens": 2, "suffix": "end",
                            "logit_bias": bias})  # fmt: skip
    assert answer.status_code == 200, answer.text
    sent = simulator.stats()["last_bodies"][-1]
    assert sent["suffix"] == "end" and sent["logit_bias"] == bias
    schema = {"type": "json_object"}
    answer = requests.post(
        f"{api.url}/v1/chat/completions", headers=AUTH, timeout=30,
        json={"model": "vllm", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
              "response_format": schema},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert simulator.stats()["last_bodies"][-1]["response_format"] == schema
