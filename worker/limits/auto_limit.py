"""``max_concurrency = "auto"``: the limit in force of an endpoint, found from what genqueue
measures and shared by every worker in Redis.

The controller lives in Lua (``scripts/lib/auto_limit.lua``), updated at each call's end by the
script that releases its slot; the slot scripts read the limit in force from the same hash in
the same script. Here: the spec the scripts take (:func:`limit_spec`), the sample a call ends
with (:func:`sample`), and the limit in force as the reports read it (:func:`in_force`, the
same rule as the Lua ``limit_in_force``). Everything is keyed by the id the endpoint's slot keys
use, so that a replica with slot keys of its own has a controller of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker import keys
from worker.errors import EndpointError, EndpointTimeout

#: The bounds of an "auto" limit when none are given: it starts at the lower one.
DEFAULT_AUTO_MIN = 1
DEFAULT_AUTO_MAX = 64
#: The answers that mean the endpoint is overloaded: the limit backs off at once.
OVERLOAD_STATUSES = frozenset({429, 503})

AUTO = "auto"


#: The most ``max_concurrency`` (or a bound) may be.
MOST = 100_000
#: The kinds whose latency does not tell their concurrency: a RunPod serverless endpoint
#: queues jobs and scales its workers itself, so a job's time is mostly its wait in RunPod's
#: queue and a cold start, not the batching of one server.
NOT_AUTO_KINDS = frozenset({"runpod-serverless"})


@dataclass(frozen=True)
class AutoBounds:
    """The bounds of an "auto" limit (``auto_min_concurrency``, ``auto_max_concurrency``)."""

    low: int = DEFAULT_AUTO_MIN
    high: int = DEFAULT_AUTO_MAX

    @classmethod
    def of(cls, low: int | None, high: int | None) -> AutoBounds:
        """The bounds given, the defaults for those not given (the default max is the min
        given, when that is higher)."""
        low = DEFAULT_AUTO_MIN if low is None else low
        return cls(low, max(low, DEFAULT_AUTO_MAX) if high is None else high)


def check_max_concurrency(value: object, kind: object = None) -> int | str:
    """``max_concurrency`` as written: a whole number from 1, or ``"auto"`` (not on a kind of
    :data:`NOT_AUTO_KINDS`); a :class:`ValueError` saying what is wrong otherwise."""
    if value == AUTO:
        if kind in NOT_AUTO_KINDS:
            raise ValueError(
                f'"auto" cannot apply to a {kind} endpoint: its calls wait in RunPod\'s queue '
                "and its workers scale by themselves; give a number (the jobs outstanding)"
            )
        return AUTO
    return _whole(value, f'a whole number from 1 to {MOST}, or "auto"')


def check_auto_bound(name: str, value: object, given: dict[str, object]) -> int:
    """An ``auto_min_concurrency`` or ``auto_max_concurrency`` as written, with the fields
    validated before it (``given``): only with ``max_concurrency = "auto"``, min <= max."""
    bound = _whole(value, f"a whole number from 1 to {MOST}")
    if "max_concurrency" in given and given["max_concurrency"] != AUTO:
        raise ValueError('a bound of the limit is given only with max_concurrency = "auto"')
    low = given.get("auto_min_concurrency")
    if name == "auto_max_concurrency" and isinstance(low, int) and bound < low:
        raise ValueError(f"auto_max_concurrency ({bound}) is below auto_min_concurrency ({low})")
    return bound


def _whole(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MOST:
        raise ValueError(f"must be {what}")
    return value


def limit_spec(endpoint_id: str, cap: int | AutoBounds) -> str:
    """The limit argument of the slot scripts: ``"<n>"`` for a fixed cap, else
    ``"auto:<min>:<max>:<key>"`` (``scripts/lib/auto_limit.lua``)."""
    if isinstance(cap, int):
        return str(cap)
    return f"{AUTO}:{cap.low}:{cap.high}:{keys.auto_limit(endpoint_id)}"


def in_force(raw: bytes | str | None, auto: AutoBounds) -> int:
    """The limit in force from the hash's ``limit`` field ``raw``: floored, within the bounds,
    the lower bound before anything was measured."""
    try:
        value = int(float(raw)) if raw is not None else auto.low
    except ValueError:
        value = auto.low
    return max(auto.low, min(auto.high, value))


def limit_of(cap: int | AutoBounds, raw: bytes | str | None) -> int:
    """The limit in force of an endpoint with ``cap``, ``raw`` its controller's ``limit``
    field (read from :func:`worker.keys.auto_limit`; unused for a fixed cap)."""
    return cap if isinstance(cap, int) else in_force(raw, cap)


def overloaded(err: Exception) -> bool:
    """Whether a failed call says the endpoint is overloaded (429, 503, a timeout)."""
    if isinstance(err, EndpointTimeout):
        return True
    return isinstance(err, EndpointError) and err.status_code in OVERLOAD_STATUSES


def sample(latency_s: float, completion_tokens: int = 0, *, overload: bool = False) -> str:
    """A call's end as the controller takes it: ``"<latency ms>:<output tokens>:<signal>"``."""
    signal = "overload" if overload else "ok"
    return f"{max(0, int(latency_s * 1000))}:{max(0, completion_tokens)}:{signal}"
