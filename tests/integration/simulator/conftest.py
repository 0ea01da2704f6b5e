"""A simulator served in a thread, one per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from genqueue.simulator import RunningSimulator, SimulatorConfig, serve_in_thread


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    with serve_in_thread(SimulatorConfig()) as running:
        yield running
