"""The API's shared objects, built once per app in :func:`api_producer.main.create_app`."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials

from api_producer.auth import BEARER, KeyChecker
from api_producer.producers.async_direct import AsyncProducer
from api_producer.producers.direct import DirectProducer
from api_producer.quota import TokenBudget
from api_producer.store import TaskStore
from api_producer.token_follow import TokenFollower
from worker.endpoints.config import Endpoints
from worker.settings import Settings


@dataclass
class ApiState:
    settings: Settings
    #: For threads (batches, the CLI's paths); requests use ``enqueuer`` on the event loop.
    producer: DirectProducer
    enqueuer: AsyncProducer
    store: TaskStore
    keys: KeyChecker
    #: ``GET /v1/tasks/{id}/stream`` and the OpenAI routes' streams.
    tokens: TokenFollower
    #: Template names a request may use; ``None`` accepts any (the worker decides).
    templates: frozenset[str] | None
    #: Endpoint names a request may use; ``None`` when the API knows of none (no check).
    endpoints: frozenset[str] | None = None
    #: The endpoints' kinds and fallbacks, to refuse ``params`` they would not take.
    endpoint_specs: Endpoints | None = None
    #: The tenants' token budgets; ``None`` when no tenants file can give one.
    budget: TokenBudget | None = None
    #: The ``created`` of the OpenAI models (seconds since the epoch).
    models_created_s: int = 0


# The dependencies are coroutines, even those that never wait: FastAPI runs a plain ``def``
# dependency in its thread pool, a hop to another thread and back on every request.
async def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.genqueue
    return state


async def authenticated(
    request: Request,
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
) -> str:
    """The caller's id: checked already by :class:`KeyFirstRoute`, or checked now."""
    caller: str | None = getattr(request.state, "caller", None)
    if caller is None:
        caller = await (await get_state(request)).keys(request)
    return caller


class KeyFirstRoute(APIRoute):
    """A route that checks the caller's key, from the headers alone, before anything else.

    FastAPI reads and parses a request's body before it solves the route's dependencies, so a
    key checked only by a dependency would come after a body of up to the size limit had been
    read, parsed and answered 422. Here a request without a valid key is 401 with its body
    unread (and unmeasured: :class:`~api_producer.body_limit.BodySizeLimit` refuses at the first
    read).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def key_first(request: Request) -> Response:
            request.state.caller = await (await get_state(request)).keys(request)
            return await handler(request)

        return key_first


StateDep = Annotated[ApiState, Depends(get_state)]
CallerDep = Annotated[str, Depends(authenticated)]
