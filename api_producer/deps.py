"""The API's shared objects, built once per app in :func:`api_producer.main.create_app`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from api_producer.async_producer import AsyncProducer
from api_producer.auth import KeyChecker
from api_producer.producer import DirectProducer
from api_producer.store import TaskStore
from worker.endpoints import Endpoints
from worker.settings import Settings


@dataclass
class ApiState:
    settings: Settings
    #: For threads (batches, the CLI's paths); requests use ``enqueuer`` on the event loop.
    producer: DirectProducer
    enqueuer: AsyncProducer
    store: TaskStore
    keys: KeyChecker
    #: Template names a request may use; ``None`` accepts any (the worker decides).
    templates: frozenset[str] | None
    #: Endpoint names a request may use; ``None`` when the API knows of none (no check).
    endpoints: frozenset[str] | None = None
    #: The endpoints' kinds and fallbacks, to refuse ``params`` they would not take.
    endpoint_specs: Endpoints | None = None


# The dependencies are coroutines, even those that never wait: FastAPI runs a plain ``def``
# dependency in its thread pool, a hop to another thread and back on every request.
async def get_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.genqueue
    return state


async def authenticated(request: Request) -> str:
    return await (await get_state(request)).keys(request)


StateDep = Annotated[ApiState, Depends(get_state)]
CallerDep = Annotated[str, Depends(authenticated)]
