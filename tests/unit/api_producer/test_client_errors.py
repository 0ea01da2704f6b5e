"""The client's errors in words: FastAPI's list of problems becomes ``where: what; ...``."""

from __future__ import annotations

from typing import Any

import pytest

from api_producer.client import field_path, in_words


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        (["body", "params", "max_tokens"], "params.max_tokens"),
        (["body", "requests", 2, "prompt"], "requests[2].prompt"),
        (["query", "from"], "from"),
        (["body"], ""),
        ([3, "prompt"], "[3].prompt"),
        (["prompt"], "prompt"),
    ],
)
def test_field_path(loc: list[Any], path: str) -> None:
    assert field_path(loc) == path


@pytest.mark.parametrize(
    ("detail", "words"),
    [
        ("a batch holds at most 100 requests", "a batch holds at most 100 requests"),
        (
            [{"type": "date_from_datetime_parsing", "loc": ["query", "from"],
              "msg": "Input should be a valid date"}],
            "from: Input should be a valid date",
        ),
        (
            [{"loc": ["body", "prompt"], "msg": "Field required"},
             {"loc": ["body", "params", "top_p"], "msg": "Input should be a number"}],
            "prompt: Field required; params.top_p: Input should be a number",
        ),
        ([{"loc": ["body"], "msg": "JSON decode error"}], "JSON decode error"),
        ([], "invalid request"),
        (["odd"], "odd"),
    ],
)  # fmt: skip
def test_in_words(detail: Any, words: str) -> None:
    assert in_words(detail) == words
