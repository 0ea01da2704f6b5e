"""``/v1/models`` as OpenAI clients read it: the endpoints the caller's tenant may use, each
retrievable, a real ``created``; an unknown model or path answered in OpenAI's shape."""

from __future__ import annotations

import time

import openai
import pytest
import requests

from tests.integration.api.conftest import API_KEY
from tests.integration.tenants.conftest import write_tenants
from worker.tenancy.tenants import hash_key

pytestmark = pytest.mark.timeout(60)
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def sdk(url: str, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_the_default_model_is_listed_and_retrieved(redis_url, simulator, api_factory) -> None:
    api = api_factory(redis_url, runpod_endpoint_url=simulator.url)
    listed = sdk(api.url).models.list().data
    assert [model.id for model in listed] == ["default"]
    assert abs(listed[0].created - time.time()) < 120
    model = sdk(api.url).models.retrieve("default")
    assert model.id == "default" and model.created == listed[0].created
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk(api.url).models.retrieve("gpt-4")
    assert unknown.value.code == "model_not_found" and "(default)" in unknown.value.message
    with pytest.raises(openai.NotFoundError) as call:
        sdk(api.url).completions.create(model="gpt-4", prompt="x")
    assert "(default)" in call.value.message and call.value.body["param"] == "model"


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_an_unknown_v1_path_is_openais_404_naming_the_routes(
    redis_url, api_factory, method
) -> None:
    api = api_factory(redis_url)
    answer = requests.request(method, f"{api.url}/v1/embeddings", headers=AUTH, timeout=10)
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["message"].startswith(f"Invalid URL ({method} /v1/embeddings)")
    assert "POST /v1/chat/completions" in error["message"]
    assert error["type"] == "invalid_request_error" and error["code"] == "unknown_url"
    assert requests.get(f"{api.url}/nowhere", timeout=10).json() == {"detail": "Not Found"}
    assert requests.get(f"{api.url}/v1", timeout=10).json()["error"]["code"] == "unknown_url"
    # A known path with another method is still 405, not a 404.
    assert requests.put(f"{api.url}/v1/tasks", headers=AUTH, timeout=10).status_code == 405


def test_a_tenant_sees_and_names_only_its_endpoints(redis_url, api_factory, tmp_path) -> None:
    endpoints = tmp_path / "endpoints.toml"
    endpoints.write_text(
        '[endpoints.main]\nurl = "http://127.0.0.1:9"\n[endpoints.secret]\nurl = "http://127.0.0.1:9"\n'
    )
    tenants = write_tenants(
        tmp_path / "tenants.toml",
        f'[tenants.narrow]\nkey_hashes = ["{hash_key("narrow-key")}"]\nendpoints = ["main"]\n'
        f'[tenants.wide]\nkey_hashes = ["{hash_key("wide-key")}"]\n',
    )
    api = api_factory(
        redis_url, api_keys="", tenants_file=tenants, endpoints_file=endpoints,
        runpod_endpoint_url=None,
    )  # fmt: skip
    assert [m.id for m in sdk(api.url, "wide-key").models.list().data] == ["main", "secret"]
    assert [m.id for m in sdk(api.url, "narrow-key").models.list().data] == ["main"]
    with pytest.raises(openai.NotFoundError) as hidden:
        sdk(api.url, "narrow-key").models.retrieve("secret")
    assert "secret" not in hidden.value.message.split("does not exist")[1]
    with pytest.raises(openai.NotFoundError) as call:
        sdk(api.url, "narrow-key").completions.create(model="secret", prompt="x")
    assert call.value.code == "model_not_found" and "(main)" in call.value.message
