"""The simulator's batching mode (``batch_knee``): generations past the knee run slower, and
the knee moves mid-run through ``POST /_sim/config``."""

from __future__ import annotations

import time

import pytest

from genqueue.simulator import RunningSimulator
from tests.integration.simulator.helpers import concurrently, configure

pytestmark = pytest.mark.timeout(30)


def timed(sim: RunningSimulator, count: int) -> float:
    started = time.monotonic()
    answers = concurrently(sim, count)
    assert [a.status_code for a in answers] == [200] * count
    return time.monotonic() - started


def test_past_the_knee_each_generation_runs_slower_and_the_knee_moves(
    sim: RunningSimulator,
) -> None:
    assert configure(sim, latency_s=0.1, batch_knee=1, batch_slowdown=2.0).status_code == 200
    # A knee of one: n at once each run at (1 / n) ** 2 of full speed, so the server does at
    # most one generation-second of work a second whatever their arrival: four of 0.1 s take
    # 0.4 s at least (a lower bound: sleeping is never faster than asked), where a server
    # without a knee would take 0.1 s.
    assert timed(sim, 4) >= 0.4
    assert configure(sim, batch_knee=4).status_code == 200
    assert timed(sim, 4) >= 0.1  # at the knee: full speed


@pytest.mark.parametrize(
    ("field", "value"), [("batch_knee", -1), ("batch_knee", 1.5), ("batch_slowdown", 0.5)]
)
def test_bad_batching_values_are_refused(sim: RunningSimulator, field: str, value: float) -> None:
    answer = configure(sim, **{field: value})
    assert answer.status_code == 400 or answer.status_code == 422, answer.text
    assert field in answer.text
