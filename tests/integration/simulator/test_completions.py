"""Completions, chat and the model routes: answers and 422s (genqueue.simulator.completions)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from genqueue.simulator import RunningSimulator
from tests.integration.simulator.helpers import TIMEOUT, complete

# --------------------------------------------------------------------------- normal answers


def test_completion_shape_and_usage(sim: RunningSimulator) -> None:
    response = complete(sim, prompt="hello there  world", max_tokens=8, seed=7)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    data = response.json()
    assert data["id"].startswith("conv-")
    assert data["object"] == "text_completion"
    assert data["model"] == "genqueue-simulated-model"
    assert abs(data["created"] - time.time()) < 60
    (choice,) = data["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] is None
    assert len(choice["text"].split()) == 8
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}


def test_default_max_tokens_gives_16_words_and_stop(sim: RunningSimulator) -> None:
    data = complete(sim, prompt="", temperature=0.7, top_p=0.9, min_p=0.05).json()
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 1, "completion_tokens": 16, "total_tokens": 17}


def test_text_is_deterministic_for_a_seed(sim: RunningSimulator) -> None:
    def text(seed: int, prompt: str = "Tell me a story") -> str:
        return str(complete(sim, prompt=prompt, seed=seed).json()["choices"][0]["text"])

    assert text(42) == text(42)
    assert text(42) != text(43)
    assert text(42) != text(42, prompt="Another prompt")


def test_stop_string_truncates(sim: RunningSimulator) -> None:
    full = complete(sim, prompt="x", seed=5, max_tokens=10).json()["choices"][0]["text"]
    third_word = full.split()[2]
    data = complete(sim, prompt="x", seed=5, max_tokens=10, stop=[" " + third_word]).json()
    assert data["choices"][0]["text"] == full[: full.index(" " + third_word)]
    assert data["choices"][0]["finish_reason"] == "stop"


def test_chat_completion(sim: RunningSimulator) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    url = f"{sim.url}/v1/chat/completions"
    first = requests.post(url, json={"messages": messages, "seed": 1}, timeout=TIMEOUT).json()
    again = requests.post(url, json={"messages": messages, "seed": 1}, timeout=TIMEOUT).json()
    assert first["object"] == "chat.completion"
    choice = first["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 16
    assert choice["message"] == again["choices"][0]["message"]
    assert first["usage"]["prompt_tokens"] == 3


def test_models_model_info_and_404(sim: RunningSimulator) -> None:
    models = requests.get(f"{sim.url}/v1/models", timeout=TIMEOUT).json()
    assert models == {
        "object": "list",
        "data": [
            {"id": "genqueue-simulated-model", "object": "model", "created": 0, "owned_by": "user"}
        ],
    }
    info = requests.get(f"{sim.url}/v1/internal/model/info", timeout=TIMEOUT).json()
    assert info == {"model_name": "genqueue-simulated-model", "lora_names": []}
    missing = requests.get(f"{sim.url}/v1/nothing", timeout=TIMEOUT)
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    wrong_method = requests.get(f"{sim.url}/v1/completions", timeout=TIMEOUT)
    assert wrong_method.status_code == 405


# --------------------------------------------------------------------------- validation


def test_missing_prompt_is_422_in_fastapi_shape(sim: RunningSimulator) -> None:
    response = complete(sim, max_tokens=5)
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "type": "missing",
                "loc": ["body", "prompt"],
                "msg": "Field required",
                "input": {"max_tokens": 5},
            }
        ]
    }


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        (b"[1, 2]", ["body"]),
        (b"{not json", ["body", 1]),
        (b'{"prompt": "x", "max_tokens": "many"}', ["body", "max_tokens"]),
        (b'{"prompt": 3}', ["body", "prompt"]),
    ],
)
def test_invalid_bodies_are_422(sim: RunningSimulator, data: bytes, loc: list[Any]) -> None:
    response = requests.post(f"{sim.url}/v1/completions", data=data, timeout=TIMEOUT)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == loc
