"""``genqueue bench --worker-code DIR``: the fair-backlog scenario also runs the worker of
another checkout (the code before a change), and says so in its table."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from genqueue.bench.config import BenchError, add_arguments, resolve_config
from genqueue.bench.table import _fair_backlog_rows


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--scenario", "fair-backlog", *argv])


def test_a_checkout_with_a_worker_package_is_taken_resolved(tmp_path: Path) -> None:
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "__init__.py").write_text("")
    config = resolve_config(_args("--worker-code", str(tmp_path / "." / "")))
    assert config.worker_code == tmp_path.resolve()
    assert resolve_config(_args()).worker_code is None


def test_a_folder_without_a_worker_package_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"--worker-code .*: no worker/ package there"):
        resolve_config(_args("--worker-code", str(tmp_path)))


def _run(b_p50: float) -> dict:
    first = {"p50": b_p50, "p99": b_p50 * 2}
    tenant = {"first_of_burst_s": first, "unstarted": 0}
    shares = {"a": 0.25, "b": 0.25, "c": 0.5}
    return {
        "b": tenant, "c": tenant, "shares": {"call_shares": shares, "token_shares": shares},
        "shares_after_first_start": {"call_shares": shares, "token_shares": shares},
        "endpoint_use": 0.9, "redis_commands_per_call": 300, "redis_cpu_us_per_call": 4000,
        "worker_cpu_ms_per_call": 17.0, "backlog_sorted_after_s": 5.0,
    }  # fmt: skip


def test_the_table_shows_the_other_checkout_only_when_it_ran() -> None:
    fair = {
        "backlog_tasks": 50_000, "burst": 10, "burst_every_s": 5.0, "cap": 4,
        "latency_ms": 500.0, "tokens_backlog": 5_000,
        "genqueue": _run(0.4), "bare": _run(30.0), "genqueue_tokens": _run(0.2),
    }  # fmt: skip
    assert not any("worker of" in row[0] for row in _fair_backlog_rows(fair))
    fair |= {"genqueue_worker_code": _run(33.0), "worker_code": "/src/before"}
    rows = {row[0].strip(): row[1] for row in _fair_backlog_rows(fair)}
    assert rows["the worker of /src/before: b's / c's first start p50 / p99, s"] == (
        "33.0 / 66.0 (0 unstarted); 33.0 / 66.0 (0 unstarted)"
    )
