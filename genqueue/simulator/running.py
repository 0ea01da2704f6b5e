"""Running a simulator: in a daemon thread for tests and the bench, or until a signal."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import threading
from types import TracebackType

from genqueue.simulator.config import SimulatorConfig
from genqueue.simulator.server import Simulator


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _connect_host(host: str) -> str:
    """The address a local client should use for a server bound to ``host``."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


class RunningSimulator:
    """A :class:`Simulator` serving from an event loop in a daemon thread."""

    def __init__(
        self,
        simulator: Simulator,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop,
        stop_event: asyncio.Event,
        thread: threading.Thread,
    ) -> None:
        self.simulator = simulator
        self.host = host
        self.port = port
        self.url = _url(_connect_host(host), port)
        self._loop = loop
        self._stop_event = stop_event
        self._thread = thread

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the simulator and wait for its thread (idempotent)."""
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout_s)

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_Started = tuple[asyncio.AbstractEventLoop, asyncio.Event, int]


async def _serve_until_stopped(
    simulator: Simulator, host: str, port: int, started: concurrent.futures.Future[_Started]
) -> None:
    try:
        bound = await simulator.start(host, port)
    except Exception as exc:
        started.set_exception(exc)
        return
    stop_event = asyncio.Event()
    started.set_result((asyncio.get_running_loop(), stop_event, bound))
    try:
        await stop_event.wait()
    finally:
        await simulator.stop()


def serve_in_thread(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> RunningSimulator:
    """Start a simulator on its own event loop in a daemon thread; return once it is bound."""
    simulator = Simulator(config)
    started: concurrent.futures.Future[_Started] = concurrent.futures.Future()
    thread = threading.Thread(
        target=asyncio.run,
        args=(_serve_until_stopped(simulator, host, port, started),),
        name="genqueue-simulator",
        daemon=True,
    )
    thread.start()
    loop, stop_event, bound = started.result(timeout=30)
    return RunningSimulator(simulator, host, bound, loop, stop_event, thread)


async def _serve_until_signalled(host: str, port: int, config: SimulatorConfig) -> None:
    simulator = Simulator(config)
    bound = await simulator.start(host, port)
    print(f"simulator listening on {_url(host, bound)}", flush=True)
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop_event.set)
    try:
        await stop_event.wait()
    finally:
        await simulator.stop()


def run(host: str, port: int, config: SimulatorConfig) -> None:
    """Serve until SIGINT/SIGTERM (blocking); for ``genqueue simulate``."""
    asyncio.run(_serve_until_signalled(host, port, config))
