"""The simulator as a RunPod pod: RunPod's REST control API for it, and what a pod that is
stopped, booting or loading its model answers on its completions routes.

``POST /v1/pods/{podId}/start`` and ``/stop`` answer 200 with the pod's description and
``GET /v1/pods/{podId}`` describes it (``id``, ``desiredStatus``: ``RUNNING`` or ``EXITED``,
``costPerHr``), as RunPod's REST API does (https://docs.runpod.io/api-reference/pods/). When
``pod_api_key`` is set, each asks ``Authorization: Bearer <pod_api_key>``; an unknown pod id is
a 404.

A pod started answers nothing useful at once, and does not say so: for ``pod_cold_start_s``
its completions routes answer RunPod's proxy's 502, then for ``pod_model_load_s`` a plain-text
500 (text-generation-webui before its model is loaded), then they generate. A stopped pod's
routes answer the 502 too. ``pod_noop_starts`` starts (and ``pod_noop_stops`` stops) answer
200 and change nothing (a known RunPod behaviour of restarts), one fewer each time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from genqueue.simulator.config import SimulatorConfig, SimulatorStats
from genqueue.simulator.protocol import Request, Response, Route, json_response, text_response

PODS_PREFIX = "/v1/pods/"
RUNNING, EXITED = "RUNNING", "EXITED"


class SimulatedPod:
    """The pod's state: ``desiredStatus``, and when it last started (for its boot and load)."""

    def __init__(self, config: SimulatorConfig, stats: Callable[[], SimulatorStats]) -> None:
        self._config = config
        self._stats = stats
        self.status = RUNNING
        #: ``time.monotonic()`` of the last start that took effect (0: ready from the outset).
        self._started = 0.0
        self._noop_used = 0
        self._noop_stops_used = 0

    def start(self) -> None:
        """Start the pod (an answer of 200 either way), unless a no-op start is due."""
        self._stats().pod_start_calls += 1
        if self._noop_used < self._config.pod_noop_starts:
            self._noop_used += 1
            return
        if self.status != RUNNING:
            self.status = RUNNING
            self._started = time.monotonic()
            self._stats().pod_starts += 1

    def stop(self) -> None:
        """Stop the pod (an answer of 200 either way), unless a no-op stop is due."""
        self._stats().pod_stop_calls += 1
        if self._noop_stops_used < self._config.pod_noop_stops:
            self._noop_stops_used += 1
            return
        if self.status == RUNNING:
            self.status = EXITED
            self._stats().pod_stops += 1

    def describe(self) -> dict[str, Any]:
        config = self._config
        return {
            "id": config.pod_id,
            "desiredStatus": self.status,
            "costPerHr": config.pod_cost_per_hr,
            "name": "genqueue-simulated-pod",
        }

    def unready(self) -> Response | None:
        """What the completions routes answer while the pod is not serving (None: serving)."""
        if self._config.pod_id is None:
            return None
        if self.status != RUNNING:
            return _proxy_502()
        up_s = time.monotonic() - self._started
        if self._started and up_s < self._config.pod_cold_start_s:
            return _proxy_502()
        if self._started and up_s < self._config.pod_cold_start_s + self._config.pod_model_load_s:
            return text_response(500, "Internal Server Error")
        return None


def _proxy_502() -> Response:
    return text_response(502, "Bad Gateway: the pod is not running")


class PodRoutes:
    """``/v1/pods/{podId}``, ``/start``, ``/stop``: RunPod's REST API for the one pod."""

    def __init__(self, pod: SimulatedPod, config: SimulatorConfig) -> None:
        self._pod = pod
        self._config = config

    def prefix_routes(self) -> dict[str, Route]:
        # control=True: the pod's key, not the completions' key, guards these routes.
        return {PODS_PREFIX: Route(frozenset({"GET", "POST"}), self._pods, control=True)}

    async def _pods(self, request: Request, *_: Any) -> Response:
        key = self._config.pod_api_key
        if key is not None and request.headers.get("authorization") != f"Bearer {key}":
            return json_response(401, {"error": "unauthorized"})
        pod_id, _sep, action = request.path.removeprefix(PODS_PREFIX).partition("/")
        if self._config.pod_id is None or pod_id != self._config.pod_id:
            return json_response(404, {"error": f"pod not found: {json.dumps(pod_id)}"})
        if request.method == "GET" and action == "":
            return json_response(200, self._pod.describe())
        if request.method == "POST" and action in ("start", "stop"):
            if action == "start":
                self._pod.start()
            else:
                self._pod.stop()
            return json_response(200, self._pod.describe())
        return json_response(405, {"error": "method not allowed"})
