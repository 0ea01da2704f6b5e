"""No server-side request forgery: the worker posts to the configured endpoint and nowhere else.

A caller cannot name a URL (no request field takes one, and URL-looking params are only body
fields), and an endpoint answering with a redirect does not send the worker (and its RunPod key)
to another host.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from tests.integration.security.helpers import TinyServer
from worker.contract import GenerationParams, GenerationRequest, Message

pytestmark = pytest.mark.timeout(90)

URL_WORDS = ("url", "uri", "host", "endpoint", "base", "address", "proxy", "callback", "webhook")
#: The one field that takes a URL, refused for private, loopback and link-local addresses
#: before anything is enqueued: tests/integration/observability/test_webhooks.py; read one way
#: only and sent to the address checked: tests/integration/security/test_webhook_ssrf.py.
GUARDED_URL_FIELDS = {"webhook_url"}
#: Chooses among the endpoints an operator configured, by name (never a URL).
NAME_FIELDS = {"endpoint"}


def _field_names(model: type[BaseModel]) -> list[str]:
    exempt = GUARDED_URL_FIELDS | NAME_FIELDS
    return [name for name in model.model_fields if name not in exempt]


def test_the_endpoint_field_takes_only_a_name() -> None:
    for value in ("http://10.0.0.5/v1", "127.0.0.1:5000", "a/b", "A", "x" * 40):
        with pytest.raises(ValidationError):
            GenerationRequest(prompt="hi", endpoint=value)
    assert GenerationRequest(prompt="hi", endpoint="small-2").endpoint == "small-2"


@pytest.mark.parametrize("model", [GenerationRequest, GenerationParams, Message])
def test_no_request_field_takes_a_url(model: type[BaseModel]) -> None:
    names = _field_names(model)
    assert names, "the model has no fields"
    assert not [name for name in names if any(word in name.lower() for word in URL_WORDS)]
    for name in ("endpoint_url", "url", "base_url", "api_base", "callback_url"):
        assert name not in model.model_fields


def _count_only(_: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
    completion = {"choices": [{"text": "from the wrong host", "finish_reason": "stop"}]}
    return 200, {"Content-Type": "application/json"}, json.dumps(completion).encode()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirecting_endpoint_is_not_followed(
    redis_url, redis_client, start_worker, celery_client, status: int
) -> None:
    with TinyServer(_count_only) as elsewhere:
        target = f"{elsewhere.url}/v1/completions"

        def redirect(_: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
            return status, {"Location": target}, b""

        with TinyServer(redirect) as endpoint:
            start_worker(redis_url, endpoint.url, RUNPOD_API_KEY="runpod-key-for-redirect-test")
            result = celery_client.send_task(
                "genqueue.generate", kwargs={"request": {"prompt": "hi"}}
            )
            with pytest.raises(Exception, match="redirect") as info:
                result.get(timeout=30)
            assert type(info.value).__name__ != "TimeoutError"
            assert endpoint.hits == ["POST /v1/completions"]
        assert elsewhere.hits == []
    record = redis_client.hgetall(f"genqueue:task:{result.id}")
    error = json.loads(record[b"error"])
    assert error["type"] == "endpoint_rejected"
    assert str(status) in error["message"]
    assert record[b"attempts"] == b"1"


def test_url_looking_params_do_not_change_the_destination(
    tmp_path, redis_url, simulator, start_worker, celery_client
) -> None:
    # An endpoint that takes parameters unknown to its kind (strict_params = false): the
    # default refuses them outright.
    endpoints = tmp_path / "endpoints.toml"
    endpoints.write_text(f'[endpoints.loose]\nurl = "{simulator.url}"\nstrict_params = false\n')
    with TinyServer(_count_only) as elsewhere:
        params: dict[str, Any] = {
            "max_tokens": 3,
            "base_url": elsewhere.url,
            "api_base": elsewhere.url,
            "endpoint_url": f"{elsewhere.url}/v1/completions",
            "callback_url": elsewhere.url,
        }
        start_worker(redis_url, "", GENQUEUE_ENDPOINTS_FILE=endpoints)
        result = celery_client.send_task(
            "genqueue.generate", kwargs={"request": {"prompt": "hi", "params": params}}
        )
        assert result.get(timeout=30)["usage"]["completion_tokens"] == 3
        assert elsewhere.hits == []
    body = simulator.stats()["last_bodies"][-1]
    # They reach the endpoint as inert body fields, as any unknown sampler field would.
    assert body["base_url"] == elsewhere.url
    assert simulator.stats()["calls"] == 1


def test_url_looking_params_are_refused_by_a_strict_endpoint(
    redis_url, simulator, start_worker, celery_client
) -> None:
    start_worker(redis_url, simulator.url)
    params = {"base_url": "http://127.0.0.1:9", "max_tokens": 3}
    result = celery_client.send_task(
        "genqueue.generate", kwargs={"request": {"prompt": "hi", "params": params}}
    )
    with pytest.raises(Exception, match=r"does not take params\.base_url"):
        result.get(timeout=30)
    assert simulator.stats()["calls"] == 0
