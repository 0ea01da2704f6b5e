"""Streaming against llama.cpp's server (llama-cpp-python), a server nobody here wrote: its own
server-sent events, through genqueue's stream route and its OpenAI front door."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import requests

from api_producer.client import GenQueueClient
from tests.integration.api.conftest import API_KEY, api_factory
from tests.real_servers.conftest import REAL_SERVERS, LlamaServer
from tests.real_servers.test_llama_cpp import _endpoints
from worker.contract import TaskStatus

__all__ = ["api_factory"]

pytestmark = REAL_SERVERS


def _service(tmp_path: Path, url: str, redis_url: str, start_worker: Any, api_factory: Any) -> str:
    env = _endpoints(tmp_path, url, model="tiny-llama")
    start_worker(redis_url, "", **env)
    api = api_factory(
        redis_url, endpoints_file=Path(env["GENQUEUE_ENDPOINTS_FILE"]), runpod_endpoint_url=None
    )
    return str(api.url)


def test_a_streamed_completion_and_chat_through_the_stream_route(
    llama_server: LlamaServer, tmp_path, redis_url, start_worker, api_factory
) -> None:
    api_url = _service(tmp_path, llama_server.url, redis_url, start_worker, api_factory)
    with GenQueueClient(api_url, api_key=API_KEY) as client:
        for body in (
            {"prompt": "How can I make a cake?", "params": {"max_tokens": 24, "seed": 1}},
            {"messages": [{"role": "user", "content": "Hi"}], "chat": True,
             "params": {"max_tokens": 24, "seed": 1}},
        ):  # fmt: skip
            task_id = client.submit({**body, "stream": True})
            items = list(client.stream(task_id))
            final = items[-1]
            assert isinstance(final, TaskStatus) and final.status.value == "succeeded", final
            assert final.result is not None
            pieces = [item for item in items[:-1] if isinstance(item, str)]
            assert len(pieces) > 1  # streamed, not one whole answer
            assert "".join(pieces) == final.result.text
            assert final.result.finish_reason in ("length", "stop")
            assert final.result.usage.completion_tokens > 0


def test_the_openai_client_streams_from_llama_cpp(
    llama_server: LlamaServer, tmp_path, redis_url, start_worker, api_factory
) -> None:
    api_url = _service(tmp_path, llama_server.url, redis_url, start_worker, api_factory)
    client = openai.OpenAI(base_url=f"{api_url}/v1", api_key=API_KEY, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="llama", messages=[{"role": "user", "content": "Hi"}], max_tokens=16,
            seed=2, stream=True,
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    status = requests.get(
        f"{api_url}/v1/tasks/{chunks[0].id}", headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    ).json()  # fmt: skip
    assert text == status["result"]["text"] != ""
    whole = client.completions.create(model="llama", prompt="Once", max_tokens=8, seed=3)
    assert whole.choices[0].text and whole.usage is not None
    assert whole.usage.completion_tokens > 0
