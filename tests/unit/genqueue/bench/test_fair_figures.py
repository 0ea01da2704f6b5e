"""The fair-backlog bench's figures (genqueue/bench/fair_figures.py), on made-up timings."""

from __future__ import annotations

from genqueue.bench.fair_figures import Sent, contended_shares, time_to_start


def test_only_calls_made_while_every_tenant_waits_count_towards_the_shares() -> None:
    tasks = [Sent("a", -1, 0.0, float(n), 10) for n in range(10)]  # a waits from 0 to 9
    tasks += [Sent("b", 0, 2.0, 3.0, 1), Sent("b", 0, 2.0, 4.0, 1)]  # b waits from 2 to 4
    tasks += [Sent("b", 1, 20.0, None, 1)]  # never started: waits from 20 on, a does not
    shares = contended_shares(tasks, ["a", "b"])
    # Calls at 2, 3, 4 (a's) and 3, 4 (b's): a 3, b 2.
    assert shares["calls_counted"] == 5
    assert shares["call_shares"] == {"a": 0.6, "b": 0.4}
    assert shares["token_shares"] == {"a": round(30 / 32, 3), "b": round(2 / 32, 3)}


def test_time_to_start_per_task_and_per_burst_with_a_lower_bound_for_the_unstarted() -> None:
    tasks = [Sent("b", 0, 1.0, 1.5, 1), Sent("b", 0, 1.0, 2.0, 1), Sent("b", 1, 5.0, None, 1)]
    found = time_to_start(tasks, "b", watched_until_s=9.0)
    assert found["tasks"] == 3
    assert found["unstarted"] == 1
    assert found["first_of_burst_s"] == {"p50": 0.5, "p99": 4.0, "max": 4.0}
    assert found["per_task_s"]["max"] == 4.0


def test_from_a_bursts_first_start_the_time_it_took_to_reach_the_scheduler_is_left_out() -> None:
    tasks = [Sent("a", -1, 0.0, float(n), 1) for n in range(10)]
    tasks += [Sent("b", 0, 2.0, 4.0, 1), Sent("b", 0, 2.0, 5.0, 1)]  # sent at 2, first start 4
    assert contended_shares(tasks, ["a", "b"])["calls_counted"] == 6  # calls at 2 to 5
    later = contended_shares(tasks, ["a", "b"], from_first_start=True)
    assert later["calls_counted"] == 4  # calls at 4 and 5
    assert later["call_shares"] == {"a": 0.5, "b": 0.5}
