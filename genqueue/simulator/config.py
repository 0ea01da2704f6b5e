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
    # A batching server (vLLM, llama.cpp's --parallel): up to batch_knee generations at once
    # each take latency_s; beyond it each runs slower, by (running / knee) ** batch_slowdown,
    # so throughput falls past the knee (0: off). Changeable mid-run (POST /_sim/config).
    batch_knee: int = 0
    batch_slowdown: float = 1.5
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
    # Playing a RunPod pod (genqueue.simulator.pod): its id (None: no pod), the account key
    # its control routes ask, the unannounced boot and model load after a start, how many
    # starts (and stops) answer 200 and do nothing, its price.
    pod_id: str | None = None
    pod_api_key: str | None = None
    pod_cold_start_s: float = 0.0
    pod_model_load_s: float = 0.0
    pod_noop_starts: int = 0
    pod_noop_stops: int = 0
    pod_cost_per_hr: float = 0.69

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
    pod_start_calls: int = 0  # POST /v1/pods/{id}/start received
    pod_starts: int = 0  # of them, those that started a stopped pod
    pod_stop_calls: int = 0
    pod_stops: int = 0  # stops of a running pod

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
    "batch_knee": (int,),
    "batch_slowdown": _NUMBER,
    "model": (str,),
    "api_key": (str, type(None)),
    "fail_rate": _NUMBER,
    "fail_status": (int,),
    "retry_after_s": (*_NUMBER, type(None)),
    "seed": (int, type(None)),
    "token_interval_s": _NUMBER,
    "stream_usage": (bool,),
    "pod_id": (str, type(None)),
    "pod_api_key": (str, type(None)),
    "pod_cold_start_s": _NUMBER,
    "pod_model_load_s": _NUMBER,
    "pod_noop_starts": (int,),
    "pod_noop_stops": (int,),
    "pod_cost_per_hr": _NUMBER,
}
_CONFIG_RANGES: dict[str, tuple[float, float]] = {
    "latency_s": (0.0, MAX_WAIT_S),
    "batch_knee": (0, 100_000),
    "batch_slowdown": (1.0, 4.0),
    "fail_rate": (0.0, 1.0),
    "fail_status": (100, 599),
    "retry_after_s": (0.0, 86400.0),
    "token_interval_s": (0.0, 10.0),
    "pod_cold_start_s": (0.0, 86400.0),
    "pod_model_load_s": (0.0, 86400.0),
    "pod_noop_starts": (0, 1_000_000),
    "pod_noop_stops": (0, 1_000_000),
    "pod_cost_per_hr": (0.0, 1000.0),
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
