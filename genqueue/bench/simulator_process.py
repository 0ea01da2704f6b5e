"""``genqueue simulate --latency L`` in a child process, its stats and CPU time."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

import requests

from genqueue.bench.config import BenchError
from genqueue.bench.processes import START_TIMEOUT_S, Children, base_env, tree_cpu_s
from genqueue.embedded_redis import free_port


class SimProcess:
    """``genqueue simulate --latency L`` in a child process."""

    def __init__(self, children: Children, latency_s: float, name: str | None = None) -> None:
        self.latency_s = latency_s
        self.name = name or f"simulator-{latency_s * 1000:g}ms"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._session = requests.Session()
        argv = [sys.executable, "-m", "genqueue", "simulate", "--port", str(port)]
        self.proc = children.spawn(self.name, [*argv, "--latency", repr(latency_s)], base_env())
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(requests.RequestException):
                if self._session.get(f"{self.url}/_sim/stats", timeout=1).ok:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the simulator did not start:\n{children.log_tail(self.name)}")
            time.sleep(0.1)

    def reset(self) -> None:
        self._session.post(f"{self.url}/_sim/reset", timeout=5).raise_for_status()

    def configure(self, **fields: Any) -> None:
        """Change the simulator's live config (``POST /_sim/config``)."""
        self._session.post(f"{self.url}/_sim/config", json=fields, timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = self._session.get(f"{self.url}/_sim/stats", timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def cpu_s(self) -> float:
        return tree_cpu_s(self.proc.pid)

    def close(self) -> None:
        self._session.close()
