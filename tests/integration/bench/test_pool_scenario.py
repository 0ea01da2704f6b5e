"""``genqueue bench --scenario pool --quick`` end to end: three simulator replicas as one pool,
a real worker, one replica SIGKILLed mid-run; no task lost, and every figure reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genqueue.bench.phases.pool import rates_after_kill
from tests.integration.bench.test_runner import _kill_session


@pytest.mark.timeout(120)
def test_quick_pool_scenario_loses_no_task_when_a_replica_dies(
    redis_url: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENQUEUE_", "RUNPOD_"))}
    env["REDIS_URL"] = redis_url
    command = [sys.executable, "-m", "genqueue", "bench", "--quick", "--scenario", "pool"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=100)
    finally:
        _kill_session(process.pid)
        process.wait()
    assert process.returncode == 0, stderr.decode(errors="replace")
    pool = json.loads(stdout.decode().strip().splitlines()[-1])["results"]["pool"]
    two, killed = pool["two_alone"], pool["killed"]
    assert (two["lost"], killed["lost"]) == (0, 0)
    assert two["per_s"] > 0 and killed["before_per_s"] > 0
    assert killed["killed_replica_served_before_kill"] > 0
    # Both replicas left took work after the kill, and the rate was sampled all along.
    assert min(killed["survivors_served"]) > killed["killed_replica_served_before_kill"] / 2
    assert len(killed["rolling_per_s"]) == int((pool["after_s"] - 2.0) / 0.5) + 1
    # The replica was gone: the pool ran slower after the kill than before it.
    assert killed["settled_level_per_s"] < killed["before_per_s"]


@pytest.mark.timeout(5)
def test_settled_is_the_first_window_from_which_the_rate_stays_near_its_end_level() -> None:
    killed_at = 100.0
    # 10 a second for the first 3 s after the kill, then 20 a second to the 12th.
    done = {f"a{i}": killed_at + 0.05 + i * 0.1 for i in range(30)}
    done |= {f"b{i}": killed_at + 3.025 + i * 0.05 for i in range(180)}
    found = rates_after_kill(done, killed_at, after_s=12.0)
    assert found["settled_level_per_s"] == 20.0
    # Windows of 2 s every 0.5 s: the one from 2.5 s holds 0.5 s at 10/s and 1.5 s at 20/s
    # (17.5/s, within 10 % of 20 only from 3.0 s on).
    assert found["settled_after_s"] == 3.0
    assert found["after_per_s"] == 20.0
    assert found["lowest_rolling_per_s"] == 10.0
