"""Property-based fuzzing of the HTTP API with schemathesis, against the real served API.

Every operation gets schema-conforming and schema-violating requests (with a valid key): none
may be a server error, and every answer must be a status the OpenAPI document lists, with the
documented body. Separately, every operation but the public ones refuses a request without a key.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis import GenerationMode, checks
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api_producer.main import create_app
from tests.integration.security.conftest import API_KEY
from worker.settings import Settings

AUTH = {"Authorization": f"Bearer {API_KEY}"}
PUBLIC = {"/healthz", "/readyz", "/docs", "/openapi.json", "/metrics", "/docs/oauth2-redirect"}
CHECKS = [
    checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 30
#: The OpenAI routes wait for their task: with no worker running, a valid call's wait runs out,
#: a documented 504 (the task carries on), not a crash. Every other 5xx still fails the test.
WAITING_ROUTES = {"/v1/completions", "/v1/chat/completions"}


def _openapi() -> dict[str, Any]:
    # The document does not depend on Redis: build it from the app without connecting.
    settings_ = Settings(redis_url="redis://127.0.0.1:6379/0", api_keys=(SecretStr(API_KEY),))
    app = create_app(settings_)
    return app.openapi()


OPENAPI = _openapi()
SCHEMA = schemathesis.openapi.from_dict(OPENAPI)
LOADED = list(SCHEMA.get_all_operations())
OPERATIONS = {
    f"{result.ok().method.upper()} {result.ok().path}": result.ok()
    for result in LOADED
    if isinstance(result, Ok)
}


def test_every_operation_loads() -> None:
    assert len(OPERATIONS) == len(LOADED) >= 6


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_fuzz_operation(api_factory, redis_url, label: str, mode: GenerationMode) -> None:
    # No long waits (?wait=S) and a small rate limit, so 429 is exercised too.
    operation = OPERATIONS[label]
    if mode is GenerationMode.NEGATIVE and not _has_inputs(operation):
        pytest.skip("nothing to make invalid: the operation takes no input")
    # No worker runs: the OpenAI routes' waits end at once (504, or an error event).
    api = api_factory(
        redis_url, api_wait_max_s=0, api_rate_limit_per_minute=20, api_openai_wait_s=0.2
    )
    checks_for = CHECKS
    if operation.path in WAITING_ROUTES:  # status_code_conformance still holds them to the doc
        checks_for = [check for check in CHECKS if check is not checks.not_a_server_error]
    statuses: list[int] = []

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        # The same examples on every run: a CI run is reproducible, not a lottery.
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        response = case.call_and_validate(base_url=api.url, headers=AUTH, checks=checks_for)
        statuses.append(response.status_code)

    fuzz()
    assert statuses, "no request was made"
    allowed = {503, 504} if operation.path in WAITING_ROUTES else {503}
    assert all(status < 500 or status in allowed for status in statuses)
    if mode is GenerationMode.NEGATIVE and operation.path.startswith("/v1/tasks"):
        assert {401, 404, 413, 422} & set(statuses), f"no refusal among {sorted(set(statuses))}"


def _has_inputs(operation: Any) -> bool:
    definition = OPENAPI["paths"][operation.path][operation.method.lower()]
    return bool(definition.get("parameters") or definition.get("requestBody"))


def _concrete(path: str) -> str:
    return path.replace("{task_id}", "some-task-id")


def _protected() -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, item in OPENAPI["paths"].items()
        if path not in PUBLIC
        for method in item
    ]


def test_the_protected_operations_are_the_task_usage_and_openai_routes() -> None:
    assert sorted(_protected()) == [
        ("DELETE", "/v1/batches/{batch_id}"),
        ("DELETE", "/v1/tasks/{task_id}"),
        ("GET", "/v1/batches/{batch_id}"),
        ("GET", "/v1/batches/{batch_id}/results"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{model}"),
        ("GET", "/v1/tasks/{task_id}"),
        ("GET", "/v1/tasks/{task_id}/stream"),
        ("GET", "/v1/usage"),
        ("POST", "/v1/batches"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/tasks"),
        ("POST", "/v1/tasks/batch"),
    ]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-key"}])
def test_every_operation_needs_a_key(api_factory, redis_url, redis_client, headers) -> None:
    api = api_factory(redis_url)
    for method, path in _protected():
        response = requests.request(
            method, f"{api.url}{_concrete(path)}", json={}, headers=headers, timeout=10
        )
        assert response.status_code == 401, f"{method} {path}: {response.status_code}"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert list(redis_client.scan_iter()) == []
    for path in PUBLIC & set(OPENAPI["paths"]) | {"/docs", "/openapi.json"}:
        assert requests.get(f"{api.url}{path}", timeout=10).status_code == 200, path
