"""``genqueue batch``: submit, follow, fetch and cancel from the shell, against a served API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.integration.batches.conftest import API_KEY, expected_text, jsonl, line


def genqueue(tmp_path: Path, api: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQUEUE_", "RUNPOD_"))}
    env.update(GENQUEUE_API_KEYS=API_KEY, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "genqueue", "batch", *args, "--api", api.url],
        cwd=tmp_path,  # no .env of the project's
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.timeout(150)
def test_submit_wait_results_round_trip(tmp_path, api, simulator, start_worker, redis_url) -> None:
    start_worker(redis_url, simulator.url)
    batch_file = tmp_path / "requests.jsonl"
    batch_file.write_bytes(jsonl(line(i) for i in range(120)))

    submitted = genqueue(tmp_path, api, "submit", str(batch_file), "--wait", "--timeout", "60")
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    assert batch_id.startswith("batch_")
    assert "120/120" in submitted.stderr  # the progress bar reached the end

    status = genqueue(tmp_path, api, "status", batch_id)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "completed"
    assert json.loads(status.stdout)["counts"]["succeeded"] == 120

    out = tmp_path / "results.jsonl"
    fetched = genqueue(tmp_path, api, "results", batch_id, "-o", str(out))
    assert fetched.returncode == 0, fetched.stderr
    lines = [json.loads(text) for text in out.read_text().splitlines()]
    assert [item["custom_id"] for item in lines] == [f"req-{i}" for i in range(120)]
    assert [item["result"]["text"] for item in lines] == [expected_text(i) for i in range(120)]
    assert not list(tmp_path.glob("*.part"))

    to_stdout = genqueue(tmp_path, api, "results", batch_id)
    assert [json.loads(text) for text in to_stdout.stdout.splitlines()] == lines

    # A finished batch has nothing left to cancel.
    cancelled = genqueue(tmp_path, api, "cancel", batch_id)
    assert json.loads(cancelled.stdout)["status"] == "completed"


@pytest.mark.timeout(60)
def test_cli_errors(tmp_path, api, redis_client) -> None:
    batch_file = tmp_path / "requests.jsonl"
    batch_file.write_bytes(jsonl([line(1), line(2, params={"max_tokens": -1})]))
    refused = genqueue(tmp_path, api, "submit", str(batch_file))
    assert refused.returncode == 1
    assert "422" in refused.stderr and "line 2: params.max_tokens" in refused.stderr
    assert refused.stdout == ""

    batch_file.write_bytes(jsonl(line(i) for i in range(3)))
    batch_id = genqueue(tmp_path, api, "submit", str(batch_file)).stdout.strip()
    cancelled = genqueue(tmp_path, api, "cancel", batch_id)
    assert json.loads(cancelled.stdout)["counts"]["cancelled"] == 3

    missing = genqueue(tmp_path, api, "status", "batch_nope")
    assert missing.returncode == 1 and "404" in missing.stderr
