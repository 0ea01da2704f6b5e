"""The OpenAI front door, with the official ``openai`` package as the client (sync, async and
streaming), through a real worker process and the simulator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest
import requests

from tests.integration.api.conftest import API_KEY

pytestmark = pytest.mark.timeout(60)
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def service(redis_url, simulator, start_worker, api_factory, tmp_path: Path):
    endpoints = tmp_path / "endpoints.toml"
    endpoints.write_text(f'[endpoints.webui]\nkind = "textgen"\nurl = "{simulator.url}"\n')
    start_worker(redis_url, "", GENQUEUE_ENDPOINTS_FILE=str(endpoints))
    return api_factory(redis_url, endpoints_file=endpoints, runpod_endpoint_url=None)


def client(url: str, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, **options)


def test_models_lists_the_endpoints(service) -> None:
    models = client(service.url).models.list()
    assert [model.id for model in models.data] == ["webui"]


def test_completion(service, simulator) -> None:
    answer = client(service.url).completions.create(
        model="webui", prompt="Once upon a time", max_tokens=7, seed=4, temperature=0.5
    )
    status = requests.get(f"{service.url}/v1/tasks/{answer.id}", headers=AUTH, timeout=10).json()
    assert status["status"] == "succeeded"
    assert answer.choices[0].text == status["result"]["text"] != ""
    assert answer.usage is not None and answer.usage.completion_tokens == 7
    assert answer.usage.total_tokens == status["result"]["usage"]["total_tokens"]
    sent = simulator.stats()["last_bodies"][-1]
    assert sent["prompt"] == "Once upon a time"  # as it is: no template
    assert sent["max_tokens"] == 7 and sent["seed"] == 4 and "stream" not in sent


def test_chat_completion_goes_to_the_chat_route(service, simulator) -> None:
    answer = client(service.url).chat.completions.create(
        model="webui",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=5,
    )
    assert answer.choices[0].message.role == "assistant"
    assert len(answer.choices[0].message.content.split()) == 5
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    sent = simulator.stats()["last_bodies"][-1]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}


def test_async_client(service) -> None:
    async def both() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=f"{service.url}/v1", api_key=API_KEY, max_retries=0
        ) as aclient:
            answers = await asyncio.gather(
                aclient.completions.create(model="webui", prompt="a", max_tokens=3),
                aclient.chat.completions.create(
                    model="webui", messages=[{"role": "user", "content": "b"}], max_tokens=3
                ),
            )
        return [answers[0].choices[0].text, answers[1].choices[0].message.content or ""]

    texts = asyncio.run(both())
    assert [len(text.split()) for text in texts] == [3, 3]


def test_streaming_chat_and_completion(service, simulator) -> None:
    simulator.configure(token_interval_s=0.02)
    openai_client = client(service.url)
    stream = openai_client.chat.completions.create(
        model="webui", messages=[{"role": "user", "content": "Tell"}], max_tokens=9,
        stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    task_id = chunks[0].id
    status = requests.get(f"{service.url}/v1/tasks/{task_id}", headers=AUTH, timeout=10).json()
    assert text == status["result"]["text"] and len(text.split()) == 9
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 9
    assert simulator.stats()["last_bodies"][-1]["stream"] is True
    pieces = [
        c.choices[0].text
        for c in openai_client.completions.create(
            model="webui", prompt="x", max_tokens=6, stream=True
        )
    ]
    assert len([p for p in pieces if p]) == 6


def test_errors_in_openai_shape(service, simulator) -> None:
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        openai.OpenAI(base_url=f"{service.url}/v1", api_key="wrong", max_retries=0).models.list()
    assert unauthorized.value.status_code == 401
    with pytest.raises(openai.NotFoundError) as unknown:
        client(service.url).completions.create(model="gpt-4", prompt="x")
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client(service.url).completions.create(model="webui", prompt="x", n=2)
    answer = requests.post(
        f"{service.url}/v1/completions", headers={**AUTH, "X-Genqueue-Priority": "12"},
        json={"model": "webui", "prompt": "x"}, timeout=10,
    )  # fmt: skip
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"


def test_a_wait_that_runs_out_is_504_and_the_task_carries_on(
    redis_url, simulator, start_worker, api_factory, tmp_path
) -> None:
    simulator.configure(latency_s=2.0)
    start_worker(redis_url, simulator.url)
    api = api_factory(redis_url, runpod_endpoint_url=simulator.url, api_openai_wait_s=0.5)
    with pytest.raises(openai.APIStatusError) as timed_out:
        client(api.url).completions.create(model="default", prompt="x", max_tokens=2)
    assert timed_out.value.status_code == 504
    message = timed_out.value.body["message"]  # type: ignore[index]
    task_id = message.split()[1]
    status = requests.get(f"{api.url}/v1/tasks/{task_id}?wait=10", headers=AUTH, timeout=20).json()
    assert status["status"] == "succeeded"


def test_a_stream_whose_task_does_not_start_in_time_ends_naming_it(
    redis_url, simulator, api_factory
) -> None:
    # No worker: the task stays queued.
    api = api_factory(redis_url, runpod_endpoint_url=simulator.url, api_openai_wait_s=0.5)
    with pytest.raises(openai.APIError) as timed_out:
        stream = client(api.url).completions.create(
            model="default", prompt="x", max_tokens=2, stream=True
        )
        list(stream)
    message = str(timed_out.value)
    assert "did not start within 0.5s" in message
    task_id = message.split("task ", 1)[1].split()[0]
    status = requests.get(f"{api.url}/v1/tasks/{task_id}", headers=AUTH, timeout=10).json()
    assert status["status"] == "queued"


def test_priority_header_sets_the_task_priority(service, redis_client) -> None:
    answer = requests.post(
        f"{service.url}/v1/completions", headers={**AUTH, "X-Genqueue-Priority": "8"},
        json={"model": "webui", "prompt": "x", "max_tokens": 2}, timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    record = redis_client.hgetall(f"genqueue:task:{answer.json()['id']}")
    assert b'"priority":8' in record[b"payload"]
