"""A second terminal beside ``genqueue up``: every command finds its Redis, API and key in the
env file ``up`` wrote, a variable set explicitly wins, and errors say what to do, in words."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from genqueue.cli.env_file import write_env_file
from tests.integration.cli.conftest import API_KEY, clean_env, genqueue

pytestmark = pytest.mark.timeout(120)


def _up_left(folder: Path, redis_url: str, api_url: str) -> Path:
    """The data folder as a running ``genqueue up`` leaves it for a second terminal."""
    data_dir = folder / ".genqueue"
    data_dir.mkdir(mode=0o700)
    env_file = data_dir / "env"
    values = {"REDIS_URL": redis_url, "GENQUEUE_API_URL": api_url, "GENQUEUE_API_KEY": API_KEY}
    write_env_file(env_file, values)
    return env_file


def _first_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.splitlines()[0] if result.stderr else ""


def test_commands_run_in_the_folder_use_the_env_file(tmp_path, api, redis_url) -> None:
    _up_left(tmp_path, redis_url, api.url)
    submitted = genqueue(tmp_path, "submit", "Hello", "--max-tokens", "3")
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stdout.strip()
    shown = genqueue(tmp_path, "status", task_id)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["task_id"] == task_id

    viewed = genqueue(tmp_path, "status", "--once")
    assert viewed.returncode == 0, viewed.stderr
    address = redis_url.split("://", 1)[1]
    said = "(from .genqueue/env, written by genqueue up)"
    assert _first_line(viewed) == f"genqueue status: Redis redis://{address} {said}"
    assert f"redis            redis://{address} {said}" in viewed.stdout.splitlines()
    assert "queue depth      1" in viewed.stdout.splitlines()

    listed = genqueue(tmp_path, "dead", "list")
    assert listed.returncode == 0, listed.stderr
    assert _first_line(listed) == f"genqueue dead: Redis redis://{address} {said}"


def test_the_redis_password_is_hidden_and_explicit_variables_win(
    tmp_path, api, redis_url, other_redis_url
) -> None:
    scheme, address = redis_url.split("://", 1)
    env_file = _up_left(tmp_path, f"{scheme}://:s3cret-pass@{address}", api.url)
    viewed = genqueue(tmp_path, "status", "--once")
    assert "s3cret-pass" not in viewed.stdout + viewed.stderr
    assert _first_line(viewed).startswith(f"genqueue status: Redis redis://***@{address} (from")

    # REDIS_URL set in the environment wins over the file, and is not announced.
    explicit = genqueue(tmp_path, "status", "--once", env=clean_env(REDIS_URL=other_redis_url))
    assert explicit.returncode == 0, explicit.stderr
    assert explicit.stderr == ""
    assert explicit.stdout.splitlines()[1] == "queue depth      0"
    # GENQUEUE_API_KEY set in the environment wins over the file's.
    refused = genqueue(tmp_path, "submit", "Hi", env=clean_env(GENQUEUE_API_KEY="not-the-key"))
    assert refused.returncode == 1
    assert "401" in refused.stderr
    assert env_file.read_text().count("GENQUEUE_API_KEY=") == 1


def test_env_file_from_another_folder(tmp_path, api, redis_url) -> None:
    env_file = _up_left(tmp_path, redis_url, api.url)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    submitted = genqueue(elsewhere, "--env-file", str(env_file), "submit", "Hi")
    assert submitted.returncode == 0, submitted.stderr
    after = genqueue(elsewhere, "status", "--once", "--env-file", str(env_file))
    assert after.returncode == 0, after.stderr
    assert f"(from {env_file}, written by genqueue up)" in _first_line(after)
    assert "queue depth      1" in after.stdout.splitlines()

    missing = genqueue(elsewhere, "status", "--once", "--env-file", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"genqueue: --env-file {tmp_path / 'nope'}: no such file"


def test_default_redis_is_named_when_nothing_names_one(tmp_path) -> None:
    # A Redis URL that nothing answers: REDIS_URL in .env is named as such on the first line.
    (tmp_path / ".env").write_text("REDIS_URL=redis://127.0.0.1:9/0\n")
    viewed = genqueue(tmp_path, "status", "--once")
    assert viewed.returncode == 1
    assert _first_line(viewed) == "genqueue status: Redis redis://127.0.0.1:9/0 (from .env)"


def test_a_refused_key_says_how_to_give_one(tmp_path, api) -> None:
    wrong = genqueue(tmp_path, "submit", "Hi", "--api", api.url, "--key", "wrong")
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == (
        "genqueue submit: the API refused the key (401): give its key with --key KEY or "
        "GENQUEUE_API_KEY (genqueue up writes its key to .genqueue/env, read by commands run in "
        "this folder)"
    )
    none = genqueue(tmp_path, "usage", "--api", api.url)
    assert none.stderr.startswith("genqueue usage: the API wants a key (401): give its key")
    right = genqueue(tmp_path, "submit", "Hi", "--api", api.url, "--key", API_KEY)
    assert right.returncode == 0, right.stderr


def test_errors_are_words_not_reprs(tmp_path, api) -> None:
    key = ("--api", api.url, "--key", API_KEY)
    bad = genqueue(tmp_path, "submit", "Hi", "--max-tokens", "0", *key)
    assert bad.returncode == 1
    assert bad.stderr.startswith("genqueue submit: 422: params.max_tokens: "), bad.stderr
    assert "{'" not in bad.stderr and "[{" not in bad.stderr

    day = genqueue(tmp_path, "usage", "--from", "2026-13-01", *key)
    assert day.returncode == 1
    assert day.stderr.startswith("genqueue usage: 422: from: Input should be a valid date")
    assert "{'" not in day.stderr

    gone = genqueue(tmp_path, "submit", "Hi", "--api", "http://127.0.0.1:9", "--key", "k")
    assert gone.stderr.strip() == (
        "genqueue submit: cannot reach the API at http://127.0.0.1:9: is genqueue up (or "
        "genqueue api) running? --api or GENQUEUE_API_URL names another"
    )


def test_submit_file_names_the_line_of_a_bad_request(tmp_path, api) -> None:
    requests_file = tmp_path / "requests.jsonl"
    requests_file.write_text(
        '{"prompt": "one"}\n\n{"prompt": "two"}\n{"prompt": "three", "params": {"max_tokens": 0}}\n'
    )
    refused = genqueue(
        tmp_path, "submit", "--file", str(requests_file), "--api", api.url, "--key", API_KEY
    )
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "genqueue submit: refused:",
        f"{requests_file}:4: params.max_tokens: Input should be greater than or equal to 1",
    ]


def test_file_errors_and_options_in_words(tmp_path) -> None:
    missing = genqueue(tmp_path, "submit", "--file", "nope.jsonl", "--key", "k")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "genqueue submit: nope.jsonl: No such file or directory"
    batch = genqueue(tmp_path, "batch", "submit", "nope.jsonl", "--key", "k")
    assert batch.stderr.strip() == "genqueue batch submit: nope.jsonl: No such file or directory"
    up = genqueue(tmp_path, "--env-file", "x", "up")
    assert up.returncode == 2
    assert "genqueue up makes its own Redis and reads no --env-file" in up.stderr
