"""The ``/_sim/*`` control routes: script answers, change the config, read or reset the stats."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from genqueue.simulator.behaviour import Behaviour
from genqueue.simulator.protocol import Request, Response, Route, json_response
from genqueue.simulator.script import parse_action


class ControlRoutes:
    """``/_sim/*``: no API key asked, never counted in the stats."""

    def __init__(self, behaviour: Behaviour) -> None:
        self._behaviour = behaviour

    def routes(self) -> dict[str, Route]:
        post, get = frozenset({"POST"}), frozenset({"GET"})
        return {
            "/_sim/script": Route(post, self._script, control=True),
            "/_sim/config": Route(get | post, self._config, control=True),
            "/_sim/stats": Route(get, self._stats, control=True),
            "/_sim/reset": Route(post, self._reset, control=True),
        }

    async def _script(self, request: Request, *_: Any) -> Response:
        try:
            payload = json.loads(request.body or b"null")
            raw_actions = payload["actions"]
            if not isinstance(raw_actions, list):
                raise ValueError("'actions' must be a list")
            actions = [parse_action(raw) for raw in raw_actions]
        except (ValueError, KeyError, TypeError) as exc:
            return json_response(400, {"detail": f"invalid script: {exc}"})
        return json_response(200, {"queued": self._behaviour.script.extend(actions)})

    async def _config(self, request: Request, *_: Any) -> Response:
        if request.method == "POST":
            try:
                update = json.loads(request.body or b"{}")
            except ValueError as exc:
                return json_response(400, {"detail": f"invalid JSON: {exc}"})
            error = self._behaviour.update_config(update)
            if error:
                return json_response(400, {"detail": error})
        return json_response(200, asdict(self._behaviour.config))

    async def _stats(self, *_: Any) -> Response:
        return json_response(200, asdict(self._behaviour.stats))

    async def _reset(self, *_: Any) -> Response:
        self._behaviour.reset()
        return json_response(200, {"reset": True})
