"""The figures' arithmetic: median and spread of repetitions, percentiles, rates, Little's law."""

from __future__ import annotations

import math
import statistics
from typing import Any


def round_figure(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


def summarize(values: list[float | None]) -> dict[str, Any]:
    """Median, min and max of the repetitions (and the repetitions themselves)."""
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "runs": values}
    return {
        "median": round_figure(statistics.median(present)),
        "min": round_figure(min(present)),
        "max": round_figure(max(present)),
        "runs": [round_figure(v) for v in values],
    }


def percentile(samples: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile."""
    ordered = sorted(samples)
    index = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


def steady_rate(times: list[float]) -> float | None:
    """Completions per second between the 10th and the 90th percentile of the finish times:
    the drain without its ramp-up and its tail."""
    low, high = len(times) // 10, len(times) - 1 - len(times) // 10
    if high - low < 2 or times[high] <= times[low]:
        return None
    return (high - low) / (times[high] - times[low])


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def littles_limit(in_flight_cap: int, latency_s: float) -> float | None:
    """Little's law: the most completions per second ``in_flight_cap`` calls of ``latency_s``
    each allow (None at 0 s: no limit)."""
    return in_flight_cap / latency_s if latency_s > 0 else None
