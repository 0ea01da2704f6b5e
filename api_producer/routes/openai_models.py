"""``GET /v1/models`` and ``GET /v1/models/{model}``: the endpoints the caller may use, as
OpenAI's models, and the one rule that turns an OpenAI ``model`` into a genqueue endpoint.

A model is a configured endpoint (the default one is ``default`` when only
``RUNPOD_ENDPOINT_URL`` names it). A tenant sees, and may name, only the endpoints its
``endpoints`` list allows; any other name is a 404 that lists the names it may use. ``created``
is when the endpoints file was last written (the API's start when there is no file).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam

from api_producer.deps import ApiState, CallerDep, StateDep
from api_producer.openai_errors import OPENAI_ERRORS, OpenAIRoute
from api_producer.openai_format import OpenAIError
from worker.settings import Settings

#: The model of the default endpoint when the API knows of no endpoints file.
DEFAULT_MODEL = "default"

router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute, responses=OPENAI_ERRORS)


def configured_at(settings: Settings) -> int:
    """The ``created`` of every model: the endpoints file's last write, else now."""
    path = settings.endpoints_file
    try:
        return int(Path(path).stat().st_mtime) if path is not None else int(time.time())
    except OSError:
        return int(time.time())


def usable_models(state: ApiState, caller: str) -> list[str]:
    """The model names ``caller`` (a tenant name) may use, sorted."""
    names = state.endpoints if state.endpoints is not None else {DEFAULT_MODEL}
    tenant = state.keys.tenant(caller)
    return sorted(name for name in names if tenant.may_use(name))


def model_endpoint(state: ApiState, caller: str, model: str) -> str | None:
    """The endpoint a call's ``model`` names (``None``: the default endpoint, the API knowing of
    no other); :class:`OpenAIError` 404 naming the usable models if it names none of them."""
    usable = usable_models(state, caller)
    if model not in usable:
        known = ", ".join(usable) or "none: this tenant may use no endpoint"
        raise OpenAIError(
            404, f"model {model!r} does not exist: a model is a configured endpoint "
            f"this key may use ({known})", code="model_not_found", param="model",
        )  # fmt: skip
    return model if state.endpoints is not None else None


def _model(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "genqueue"}


@router.get("/models")
async def list_models(state: StateDep, caller: CallerDep) -> dict[str, Any]:
    """The endpoints the caller may use, as OpenAI's model list."""
    created = state.models_created_s
    return {"object": "list", "data": [_model(n, created) for n in usable_models(state, caller)]}


@router.get("/models/{model}")
async def retrieve_model(
    model: Annotated[str, PathParam(min_length=1, max_length=64)],
    state: StateDep,
    caller: CallerDep,
) -> dict[str, Any]:
    """One model the caller may use; 404 (``model_not_found``) for any other name."""
    model_endpoint(state, caller, model)
    return _model(model, state.models_created_s)
