"""The text-generation-webui routes: ``/v1/completions``, ``/v1/chat/completions``, models."""

from __future__ import annotations

import asyncio
from typing import Any

from genqueue.simulator.behaviour import Behaviour
from genqueue.simulator.config import push
from genqueue.simulator.generation import GenParams, parse_generation
from genqueue.simulator.protocol import Request, Response, Route, json_response
from genqueue.simulator.script import shaped


class CompletionRoutes:
    """``/v1/*``: completions and chat completions (counted in the stats), the model routes."""

    def __init__(self, behaviour: Behaviour) -> None:
        self._behaviour = behaviour

    def routes(self) -> dict[str, Route]:
        post, get = frozenset({"POST"}), frozenset({"GET"})
        return {
            "/v1/completions": Route(post, self._completions, counted=True),
            "/v1/chat/completions": Route(post, self._chat_completions, counted=True),
            "/v1/models": Route(get, self._models),
            "/v1/internal/model/info": Route(get, self._model_info),
        }

    async def _completions(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Response | None:
        return await self._generation(request, reader, writer, chat=False)

    async def _chat_completions(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Response | None:
        return await self._generation(request, reader, writer, chat=True)

    async def _generation(
        self,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        chat: bool,
    ) -> Response | None:
        behaviour = self._behaviour
        body, params = parse_generation(request.body, chat)
        if body is not None:
            push(behaviour.stats.last_bodies, body)
        unready = behaviour.pod.unready()
        if unready is not None:  # a pod stopped, booting or loading its model
            return unready
        with behaviour.in_flight():
            action = behaviour.script.next_action()
            if action.kind not in ("ok", "empty_stream", "break_stream"):
                return await behaviour.perform(action, reader, writer)
            if not isinstance(params, GenParams):
                return json_response(422, {"detail": params})
            if action.kind != "ok" or (body or {}).get("stream") is True:
                return await behaviour.stream(params, chat, action)
            await behaviour.generate_delay(action.delay_s)
            return shaped(behaviour.answer(params, chat, action.size_bytes), action)

    async def _models(self, *_: Any) -> Response:
        config = self._behaviour.config
        model = {"id": config.model, "object": "model", "created": 0, "owned_by": "user"}
        return json_response(200, {"object": "list", "data": [model]})

    async def _model_info(self, *_: Any) -> Response:
        return json_response(200, {"model_name": self._behaviour.config.model, "lora_names": []})
