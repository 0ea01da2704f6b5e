"""The simulator's server: connections, keep-alive, and each request sent to its route."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from genqueue.simulator.behaviour import Behaviour
from genqueue.simulator.completions import CompletionRoutes
from genqueue.simulator.config import SimulatorConfig, SimulatorStats
from genqueue.simulator.control import ControlRoutes
from genqueue.simulator.error_bodies import unauthorized
from genqueue.simulator.pod import PodRoutes
from genqueue.simulator.protocol import (
    STREAM_LIMIT,
    HttpError,
    Request,
    Response,
    Route,
    encode_response,
    json_response,
    read_request,
    text_response,
    write_stream,
)
from genqueue.simulator.serverless import ServerlessRoutes

log = logging.getLogger("genqueue.simulator")


class Simulator:
    """The fake endpoint. Run it with :meth:`start`/:meth:`stop` inside an event loop."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._behaviour = Behaviour(config)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        serverless = ServerlessRoutes(self._behaviour)
        self._routes: dict[str, Route] = {
            **CompletionRoutes(self._behaviour).routes(),
            **ControlRoutes(self._behaviour).routes(),
            **serverless.routes(),
        }
        self._prefix_routes = {
            **serverless.prefix_routes(),
            **PodRoutes(self._behaviour.pod, config).prefix_routes(),
        }

    @property
    def config(self) -> SimulatorConfig:
        """The live configuration (``POST /_sim/config`` changes it)."""
        return self._behaviour.config

    @property
    def stats(self) -> SimulatorStats:
        """A snapshot of the statistics."""
        return self._behaviour.stats.copy()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start listening; return the bound port."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._server = await asyncio.start_server(
            self._serve_connection, host, port, backlog=4096, limit=STREAM_LIMIT
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and drop every open connection (in-flight requests are not answered)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    # ---- connections

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._connection_loop(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): this task is ours, end it quietly (asyncio logs cancelled callbacks)
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)

    async def _connection_loop(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                request = await read_request(reader, writer)
            except HttpError as exc:
                writer.write(encode_response(exc.response, keep_alive=False))
                await writer.drain()
                return
            if request is None:
                return
            response = await self._handle(request, reader, writer)
            if response is None:  # scripted hang/reset: drop the connection unanswered
                writer.transport.abort()
                return
            keep_alive = request.keep_alive and not response.close
            writer.write(encode_response(response, keep_alive))
            if response.stream is not None:
                await write_stream(writer, response.stream)
            await writer.drain()
            if not keep_alive:
                return

    async def _handle(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Response | None:
        route = self._routes.get(request.path) or self._prefix_route(request.path)
        if route is None:
            return json_response(404, {"detail": "Not Found"})
        if request.method not in route.methods:
            return json_response(405, {"detail": "Method Not Allowed"})
        if route.counted:
            self._behaviour.record_arrival(request)
        if not route.control and not self._behaviour.authorized(request):
            return unauthorized()
        try:
            result: Response | None = await route.handler(request, reader, writer)
        except Exception:
            log.exception("simulator: error handling %s %s", request.method, request.path)
            return replace(text_response(500, "Internal Server Error"), close=True)
        return result

    def _prefix_route(self, path: str) -> Route | None:
        for prefix, route in self._prefix_routes.items():
            if path.startswith(prefix) and len(path) > len(prefix):
                return route
        return None
