"""Endpoints by server kind: parameters translated or refused, max_tokens always sent, URLs
with or without /v1, a 404 naming the path, the configured model name stored."""

from __future__ import annotations

import json

import pytest
import requests

from tests.integration.api.conftest import API_KEY, api_factory
from tests.integration.endpoints.test_routing import endpoints_file, send
from worker import keys

pytestmark = pytest.mark.timeout(120)

__all__ = ["api_factory"]

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_parameters_translated_max_tokens_sent_and_model_named(
    tmp_path, redis_url, simulator, start_worker, celery_client
) -> None:
    env = endpoints_file(
        tmp_path,
        f"""
[endpoints.llama]
kind = "llamacpp"
url = "{simulator.url}"
model = "tiny-llama"
""",
    )
    start_worker(redis_url, "", **env)
    value = send(celery_client, {"prompt": "Hi", "params": {"repetition_penalty": 1.3}}).get(
        timeout=30
    )
    body = simulator.stats()["last_bodies"][-1]
    assert body["repeat_penalty"] == 1.3 and "repetition_penalty" not in body
    assert body["max_tokens"] == 512  # GENQUEUE_DEFAULT_MAX_TOKENS: servers' defaults differ
    assert body["model"] == "tiny-llama"
    assert value["model"] == "tiny-llama"
    assert value["server_model"] == "genqueue-simulated-model"  # what the server answered
    # A parameter llama.cpp's server would silently ignore fails the task (sent past the API).
    refused = send(celery_client, {"prompt": "Hi", "params": {"typical_p": 0.9}})
    with pytest.raises(Exception, match=r"does not take params\.typical_p"):
        refused.get(timeout=30)
    assert simulator.stats()["calls"] == 1


def test_the_api_refuses_a_parameter_the_endpoint_kind_does_not_take(
    tmp_path, redis_url, api_factory
) -> None:
    path = tmp_path / "endpoints.toml"
    path.write_text(
        """
[endpoints.llama]
kind = "llamacpp"
url = "http://127.0.0.1:9"
[endpoints.plain]
kind = "openai"
url = "http://127.0.0.1:9/v1"
[endpoints.loose]
kind = "openai"
url = "http://127.0.0.1:9"
strict_params = false
"""
    )
    api = api_factory(redis_url, endpoints_file=path, runpod_endpoint_url=None)

    def post(body: dict) -> requests.Response:
        return requests.post(f"{api.url}/v1/tasks", json=body, headers=AUTH, timeout=10)

    answer = post({"prompt": "x", "endpoint": "llama", "params": {"typical_p": 0.9}})
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith(
        "endpoint 'llama' (kind llamacpp) does not take params.typical_p"
    )
    assert post({"prompt": "x", "endpoint": "plain", "params": {"top_k": 4}}).status_code == 422
    ok = {"prompt": "x", "endpoint": "llama", "params": {"repetition_penalty": 1.1, "top_k": 4}}
    assert post(ok).status_code == 202
    assert post({"prompt": "x", "endpoint": "loose", "params": {"top_k": 4}}).status_code == 202
    batch = requests.post(
        f"{api.url}/v1/tasks/batch",
        json={"requests": [ok, {"prompt": "y", "endpoint": "plain", "params": {"min_p": 0.1}}]},
        headers=AUTH,
        timeout=10,
    )
    assert batch.status_code == 422 and "params.min_p" in batch.text


def test_a_404_names_the_path_tried_never_the_host(
    tmp_path, redis_url, redis_client, simulator, start_worker, celery_client
) -> None:
    env = endpoints_file(
        tmp_path,
        f"""
[endpoints.wrong]
kind = "openai"
url = "{simulator.url}/api"
""",
    )
    start_worker(redis_url, "", **env)
    result = send(celery_client, {"prompt": "Hi"})
    with pytest.raises(Exception, match="404"):
        result.get(timeout=30)
    error = json.loads(redis_client.hget(keys.task_record(result.id), "error"))
    assert error["type"] == "endpoint_rejected"
    assert error["message"].startswith("endpoint 'wrong' answered 404 for POST /api/v1/completions")
    assert "127.0.0.1" not in error["message"]
