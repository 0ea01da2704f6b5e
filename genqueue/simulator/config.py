"""The simulator's live configuration and statistics, and the check of every config value."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

HISTORY = 100  # entries kept in the stats lists
MAX_WAIT_S = 600.0  # cap for hangs and scripted delays


@dataclass
class SimulatorConfig:
    latency_s: float = 0.0  # time each completion takes before answering
    one_at_a_time: bool = False  # serialize generations (waiting requests count as in flight)
    model: str = "genqueue-simulated-model"
    api_key: str | None = None  # require "Authorization: Bearer <api_key>" on /v1/*
    fail_rate: float = 0.0  # fraction of completion requests failing with fail_status
    fail_status: int = 500
    retry_after_s: float | None = None  # Retry-After sent with injected 429s/503s
    seed: int | None = None  # RNG seed for the failure injection
    token_interval_s: float = 0.0  # between the pieces of a streamed answer
    # Honour stream_options.include_usage as text-generation-webui 4.x does (False: an older
    # one, or llama-cpp-python, that streams no usage)
    stream_usage: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            error = config_value_error(f.name, getattr(self, f.name))
            if error:
                raise ValueError(error)


@dataclass
class SimulatorStats:
    calls: int = 0  # completion requests (and serverless jobs) received, any outcome
    completions_ok: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    auth_headers: list[str] = field(default_factory=list)  # last 100 Authorization values
    last_bodies: list[dict[str, Any]] = field(default_factory=list)  # last 100 JSON bodies
    call_times: list[float] = field(default_factory=list)  # time.time() of the last 100 calls
    jobs_cancelled: int = 0  # serverless jobs cancelled through /cancel/<id>

    def copy(self) -> SimulatorStats:
        return replace(
            self,
            auth_headers=list(self.auth_headers),
            last_bodies=list(self.last_bodies),
            call_times=list(self.call_times),
        )


def push(items: list[Any], item: Any) -> None:
    """Append ``item`` to a stats list, keeping its last :data:`HISTORY` entries."""
    items.append(item)
    if len(items) > HISTORY:
        del items[: len(items) - HISTORY]


_NUMBER = (int, float)
_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "latency_s": _NUMBER,
    "one_at_a_time": (bool,),
    "model": (str,),
    "api_key": (str, type(None)),
    "fail_rate": _NUMBER,
    "fail_status": (int,),
    "retry_after_s": (*_NUMBER, type(None)),
    "seed": (int, type(None)),
    "token_interval_s": _NUMBER,
    "stream_usage": (bool,),
}
_CONFIG_RANGES: dict[str, tuple[float, float]] = {
    "latency_s": (0.0, MAX_WAIT_S),
    "fail_rate": (0.0, 1.0),
    "fail_status": (100, 599),
    "retry_after_s": (0.0, 86400.0),
    "token_interval_s": (0.0, 10.0),
}


def config_value_error(name: str, value: Any) -> str | None:
    """Return why ``value`` is not acceptable for config field ``name`` (None when it is)."""
    types = _CONFIG_TYPES.get(name)
    if types is None:
        return f"unknown config field {name!r}"
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        return f"{name}: invalid type {type(value).__name__}"
    bounds = _CONFIG_RANGES.get(name)
    if bounds and isinstance(value, int | float) and not bounds[0] <= value <= bounds[1]:
        return f"{name}: must be between {bounds[0]:g} and {bounds[1]:g}"
    return None
