"""The report as a table for people: one row a figure, genqueue beside bare Celery."""

from __future__ import annotations

from typing import Any

from genqueue.bench.workers import BATCH


def _fmt(summary: Any, digits: int = 0) -> str:
    if not isinstance(summary, dict) or summary.get("median") is None:
        return "-"
    median, low, high = summary["median"], summary["min"], summary["max"]
    if low == high:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def _drain_rows(results: dict[str, Any], found: dict[str, Any], a: str, b: str, tag: str) -> list:
    ga, gb = results.get(a, {}), results.get(b, {})
    first = ga or gb
    kind = "I/O" if tag == "drain" else "overhead"
    title = f"{kind} drain, L={first['latency_ms']:g} ms, {first['tasks']} tasks"
    return [
        (f"{title}: tasks/s", _fmt(ga.get("throughput_per_s")),
         _fmt(gb.get("throughput_per_s")), _fmt(found.get(f"{tag}_throughput"), 2)),
        ("  steady rate (10th-90th percentile of finishes), tasks/s",
         _fmt(ga.get("steady_throughput_per_s")), _fmt(gb.get("steady_throughput_per_s")), ""),
        ("  Little's-law limit (cap/L), tasks/s", _fmt({"median": ga.get("littles_limit_per_s"),
         "min": 0, "max": 0}) if ga.get("littles_limit_per_s") else "-",
         _fmt({"median": gb.get("littles_limit_per_s"), "min": 0, "max": 0})
         if gb.get("littles_limit_per_s") else "-", ""),
        ("  throughput / Little's limit: whole drain, steady",
         f"{_fmt(ga.get('littles_ratio'), 2)}, {_fmt(ga.get('steady_littles_ratio'), 2)}"
         if ga.get("littles_limit_per_s") else "-",
         f"{_fmt(gb.get('littles_ratio'), 2)}, {_fmt(gb.get('steady_littles_ratio'), 2)}"
         if gb.get("littles_limit_per_s") else "-", ""),
        ("  most requests in flight at the simulator", _fmt(ga.get("simulator_max_in_flight")),
         _fmt(gb.get("simulator_max_in_flight")), ""),
        ("  worker CPU per task, ms", _fmt(ga.get("cpu_ms_per_task"), 2),
         _fmt(gb.get("cpu_ms_per_task"), 2), _fmt(found.get(f"{tag}_cpu_per_task"), 2)),
        ("  worker peak RSS (VmHWM, tree), MB", _fmt(ga.get("peak_rss_mb")),
         _fmt(gb.get("peak_rss_mb")), _fmt(found.get(f"{tag}_peak_rss"), 2)),
        ("  Redis commands per task", _fmt(ga.get("redis_commands_per_task"), 1),
         _fmt(gb.get("redis_commands_per_task"), 1), ""),
        ("  simulator CPU per task, ms", _fmt(ga.get("simulator_cpu_ms_per_task"), 2),
         _fmt(gb.get("simulator_cpu_ms_per_task"), 2), ""),
        ("  Redis CPU per task, µs", _fmt(ga.get("redis_cpu_us_per_task")),
         _fmt(gb.get("redis_cpu_us_per_task")), ""),
        ("  one Redis core saturates at (1 s / Redis CPU per task), tasks/s",
         _fmt(ga.get("redis_core_saturates_at_per_s")),
         _fmt(gb.get("redis_core_saturates_at_per_s")), ""),
        ("  Redis commands per task, most called",
         _top_commands(ga), _top_commands(gb), ""),
    ]  # fmt: skip


def _top_commands(figures: dict[str, Any], count: int = 6) -> str:
    top = list(figures.get("redis_top_commands_per_task", {}).items())[:count]
    return " ".join(f"{name} {summary['median']:.1f}" for name, summary in top) or "-"


def _other_rows(results: dict[str, Any]) -> list:
    rows: list[tuple[str, str, str, str]] = []
    enqueue = results.get("enqueue")
    if enqueue:
        api = enqueue["api"]
        rows += [
            (f"API POST /v1/tasks, {api['clients']} clients, req/s",
             _fmt(api["requests_per_s"]), "", ""),
            ("  API p50 / p99, ms", f"{_fmt(api['p50_ms'], 1)} / {_fmt(api['p99_ms'], 1)}", "", ""),
            ("  CPU per request: API server / load generator, ms",
             f"{_fmt(api['api_cpu_ms_per_request'], 2)} / "
             f"{_fmt(api['client_cpu_ms_per_request'], 2)}", "", ""),
            ("  Redis per request: CPU, µs / commands",
             f"{_fmt(api.get('redis_cpu_us_per_request'))} / "
             f"{_fmt(api.get('redis_commands_per_request'), 1)}", "", ""),
            ("direct producer submit(), tasks/s", _fmt(enqueue["direct_submit_per_s"]), "", ""),
            (f"direct producer submit_many({BATCH}), tasks/s",
             _fmt(enqueue["direct_submit_many_per_s"]), "", ""),
        ]  # fmt: skip
    mixed = results.get("mixed")
    if mixed:
        g, b = mixed["genqueue"], mixed["bare"]
        rows += [
            (f"mixed: {mixed['batch_tasks']} batch tasks (priority 2), an interactive one "
             f"(priority 9) every {mixed['interactive_every_s']:g} s, cap {mixed['cap']}, "
             f"L={mixed['latency_ms']:g} ms", "", "", ""),
            ("  interactive time to start p50 / p99, s",
             f"{g['time_to_start_p50_s']} / {g['time_to_start_p99_s']}",
             f"{b['time_to_start_p50_s']} / {b['time_to_start_p99_s']}", ""),
            ("  interactive unfinished at the end (their wait: a lower bound)",
             str(g["interactive_unfinished"]), str(b["interactive_unfinished"]), ""),
            ("  batch tasks/s", str(g["batch_per_s"]), str(b["batch_per_s"]), ""),
            (f"  endpoint use (calls/s over {mixed['endpoint_limit_per_s']:g}/s)",
             str(g["endpoint_use"]), str(b["endpoint_use"]), ""),
        ]  # fmt: skip
        fair = mixed.get("fairness")
        if fair:
            rows.append(
                (f"  share of the calls to the weight-3 tenant (3:1 is 0.75; "
                 f"{fair['calls_counted']} calls)", str(fair["heavy_share"]), "", "")
            )  # fmt: skip
    batching = results.get("batching")
    if batching:
        rows.append(
            (
                f"batching: knee {batching['knee']}, L={batching['latency_ms']:g} ms, "
                f"{batching['seconds']:g} s a cap; tasks/s, call p50 ms",
                "",
                "",
                "",
            )
        )
        for cap, found in [*batching["fixed"].items(), ("auto", batching["auto"])]:
            rows.append(
                (f"  max_concurrency {cap}", f"{found['per_s']} / {found['call_p50_ms']}", "", "")
            )
        rows.append(
            (
                f"  auto over the best fixed cap ({batching['best_fixed_cap']}): throughput / p50",
                f"{batching['auto_throughput_ratio']} / {batching.get('auto_p50_ratio')}",
                "",
                "",
            )
        )
        for move in batching["moved"]["moves"]:
            rows.append(
                (
                    f"  knee moved to {move['knee']}: limit near it after, s",
                    str(move["reached_after_s"]),
                    "",
                    "",
                )
            )
    rows += _fair_backlog_rows(results.get("fair_backlog"))
    latency = results.get("latency")
    if latency:
        for label, key in (("p50", "p50_ms"), ("p99", "p99_ms")):
            rows.append(
                (f"submit -> result {label}, ms (direct call: "
                 f"{_fmt(latency['direct_call'][key], 2)})",
                 _fmt(latency["genqueue"][key], 1), _fmt(latency["bare"][key], 1), "")
            )  # fmt: skip
    return rows


def _fair_backlog_rows(fair: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    if not fair:
        return []
    g, b, t = fair["genqueue"], fair["bare"], fair["genqueue_tokens"]

    def starts(run: dict[str, Any], tenant: str) -> str:
        first = run[tenant]["first_of_burst_s"]
        return f"{first['p50']} / {first['p99']} ({run[tenant]['unstarted']} unstarted)"

    def shares(run: dict[str, Any], key: str, figure: str = "shares") -> str:
        return " ".join(f"{n} {v}" for n, v in run[figure][key].items())

    rows = [
        (f"fair-backlog: a's {fair['backlog_tasks']} tasks, b and c {fair['burst']} every "
         f"{fair['burst_every_s']:g} s (weights 1, 1, 2), cap {fair['cap']}, "
         f"L={fair['latency_ms']:g} ms", "", "", ""),
        ("  b's first start of a burst p50 / p99, s", starts(g, "b"), starts(b, "b"), ""),
        ("  c's first start of a burst p50 / p99, s", starts(g, "c"), starts(b, "c"), ""),
        ("  shares of the calls while all three wait (0.25 0.25 0.5)",
         shares(g, "call_shares"), shares(b, "call_shares"), ""),
        ("  the same, from each burst's first start on",
         shares(g, "call_shares", "shares_after_first_start"), "", ""),
        ("  endpoint use", str(g["endpoint_use"]), str(b["endpoint_use"]), ""),
        ("  Redis commands / CPU µs per call", f"{g['redis_commands_per_call']} / "
         f"{g['redis_cpu_us_per_call']}", f"{b['redis_commands_per_call']} / "
         f"{b['redis_cpu_us_per_call']}", ""),
        ("  worker CPU per call, ms", str(g["worker_cpu_ms_per_call"]),
         str(b["worker_cpu_ms_per_call"]), ""),
        ("  backlog sorted after, s", str(g["backlog_sorted_after_s"]), "", ""),
        (f"  fairness=tokens (a long, b short, c mixed; a's backlog {fair['tokens_backlog']}): "
         "b's / c's first start p50 / p99, s", f"{starts(t, 'b')}; {starts(t, 'c')}", "", ""),
        ("  fairness=tokens: shares of the tokens while all three wait (0.25 0.25 0.5)",
         shares(t, "token_shares"), "", ""),
        ("  fairness=tokens: shares of the calls", shares(t, "call_shares"), "", ""),
        ("  fairness=tokens: shares of the tokens, from each burst's first start on",
         shares(t, "token_shares", "shares_after_first_start"), "", ""),
    ]  # fmt: skip
    w = fair.get("genqueue_worker_code")
    if w is not None:
        rows += [
            (f"  the worker of {fair['worker_code']}: b's / c's first start p50 / p99, s",
             f"{starts(w, 'b')}; {starts(w, 'c')}", "", ""),
            ("  the worker of that checkout: shares of the calls while all three wait",
             shares(w, "call_shares"), "", ""),
            ("  the worker of that checkout: endpoint use / Redis commands per call",
             f"{w['endpoint_use']} / {w['redis_commands_per_call']}", "", ""),
        ]  # fmt: skip
    return rows


def _pool_rows(pool: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    if not pool:
        return []
    two, killed = pool["two_alone"], pool["killed"]
    title = (f"pool: {pool['replicas']} replicas, cap {pool['cap_per_replica']} each, "
             f"L={pool['latency_ms']:g} ms, {pool['seconds']:g} s a window")  # fmt: skip
    figures = [
        ("  tasks lost / failed (one killed; two alone)",
         f"{killed['lost']} / {killed['failed']}; {two['lost']} / {two['failed']}"),
        ("  tasks/s, three before the kill", str(killed["before_per_s"])),
        ("  tasks/s, the two left once settled", str(killed["after_per_s"])),
        ("  tasks/s, two replicas alone", str(two["per_s"])),
        ("  the two left over two alone", str(pool.get("after_over_two_alone"))),
        ("  settled after the kill, s (lowest rolling rate, tasks/s)",
         f"{killed['settled_after_s']} ({killed['lowest_rolling_per_s']})"),
    ]  # fmt: skip
    return [(title, "", "", ""), *((label, value, "", "") for label, value in figures)]


def render_table(report: dict[str, Any]) -> str:
    results, found = report["results"], report["ratios"]
    rows: list[tuple[str, str, str, str]] = [("figure", "genqueue", "bare Celery", "ratio")]
    if "drain" in results or "bare_drain" in results:
        rows += _drain_rows(results, found, "drain", "bare_drain", "drain")
    if "overhead" in results or "bare_overhead" in results:
        rows += _drain_rows(results, found, "overhead", "bare_overhead", "overhead")
    rows += _other_rows(results)
    rows += _pool_rows(results.get("pool"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("targets (median of the repetitions):")
    for target in report["targets"]:
        mark = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        note = f" [{target['note']}]" if target["note"] else ""
        lines.append(f"  {mark:>12}  {target['target']}: {target['measured']}{note}")
    return "\n".join(lines)
