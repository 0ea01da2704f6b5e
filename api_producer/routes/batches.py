"""``/v1/batches``: a JSONL file of requests enqueued as one batch, its progress and results."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import Field

from api_producer.batches import (
    BatchCreated,
    BatchLine,
    BatchParser,
    BatchRefused,
    BatchRules,
    BatchStatus,
    BatchStore,
    Item,
    check_webhooks,
)
from api_producer.deps import CallerDep, KeyFirstRoute, StateDep
from api_producer.ownership import check_batch_owner, no_batch, tenant_problem
from api_producer.rate_limit import Charge, RateLimitDep
from api_producer.routes.metrics import MetricsDep
from api_producer.routes.tasks import ANY_ROUTE, InvalidInput, problem
from api_producer.uploads import UploadSlots
from worker.tenancy.tenants import Tenant

_T = TypeVar("_T")
PATH = "/v1/batches"
NDJSON = "application/x-ndjson"
TOTAL_HEADER = "X-Batch-Total"
BATCH_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
BatchId = Annotated[str, Field(pattern=BATCH_ID_PATTERN)]


_CREATE: dict[int | str, dict[str, Any]] = {
    400: problem("the body is not UTF-8 text"),
    413: problem("the request body is larger than GENQUEUE_BATCH_MAX_BODY_BYTES"),
    415: problem("the Content-Type is neither JSONL nor JSON"),
    422: {
        "model": InvalidInput,
        "description": "invalid lines (each named by its number), a duplicate custom_id, "
        "more than GENQUEUE_BATCH_MAX_REQUESTS requests; nothing was enqueued",
    },
    429: problem(
        "over this key's GENQUEUE_API_RATE_LIMIT_PER_MINUTE; nothing was enqueued",
        headers={
            "Retry-After": {
                "description": "seconds until the limit resets",
                "schema": {"type": "integer"},
            }
        },
    ),
}
_CREATE[503] = problem(
    "Redis cannot be reached, or this API process is already reading "
    "GENQUEUE_BATCH_MAX_CONCURRENT_UPLOADS uploads (then with Retry-After); nothing was enqueued",
    headers={"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
)
_ONE_BATCH: dict[int | str, dict[str, Any]] = {404: problem("no such batch")}

_JSONL_SCHEMA = {
    "type": "string",
    "description": "one JSON object a line: a request as for POST /v1/tasks plus a string "
    "custom_id, unique within the batch",
}
_LINE_SCHEMA = {
    "type": "object",
    "required": ["custom_id"],
    "properties": {"custom_id": {"type": "string", "minLength": 1, "maxLength": 512}},
    "additionalProperties": True,
    "description": "a request as for POST /v1/tasks plus custom_id",
}
_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            NDJSON: {"schema": _JSONL_SCHEMA},
            "application/jsonl": {"schema": _JSONL_SCHEMA},
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["requests"],
                    "properties": {
                        "requests": {"type": "array", "minItems": 1, "items": _LINE_SCHEMA}
                    },
                    "additionalProperties": False,
                }
            },
        },
    }
}


def _json_error(description: str, schema: str = "Problem") -> dict[str, Any]:
    """An error answer spelled out: the route's own media type is NDJSON, its errors JSON."""
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
    return {"description": description, "content": content}


_RESULTS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "one JSON line per request, in input order: "
        "custom_id, task_id, status, result, error",
        "content": {NDJSON: {"schema": {"type": "string"}}},
        "headers": {
            TOTAL_HEADER: {
                "description": "lines the complete answer holds",
                "schema": {"type": "integer"},
            }
        },
    },
    401: _json_error("missing or invalid API key"),
    404: _json_error("no such batch"),
    422: _json_error("invalid input", "InvalidInput"),
    503: _json_error("Redis cannot be reached"),
}


class NdjsonResponse(StreamingResponse):
    media_type = NDJSON


# A coroutine, though it never waits: FastAPI runs a plain ``def`` dependency in a thread.
async def get_batches(request: Request) -> BatchStore:
    batches: BatchStore = request.app.state.genqueue_batches
    return batches


BatchesDep = Annotated[BatchStore, Depends(get_batches)]


def get_upload_slots(request: Request) -> UploadSlots:
    slots: UploadSlots = request.app.state.genqueue_uploads
    return slots


router = APIRouter(prefix=PATH, tags=["batches"], responses=ANY_ROUTE, route_class=KeyFirstRoute)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchCreated,
    responses=_CREATE,
    openapi_extra=_CREATE_BODY,
)
async def create_batch(
    request: Request,
    response: Response,
    state: StateDep,
    batches: BatchesDep,
    caller: CallerDep,
    charge: RateLimitDep,
    counted: MetricsDep,
) -> BatchCreated:
    """Enqueue a JSONL file of requests (each with a ``custom_id``): all of them or none."""
    settings = state.settings
    rules = BatchRules(
        max_requests=settings.batch_max_requests,
        default_priority=settings.batch_default_priority,
        templates=state.templates,
        endpoints=state.endpoints,
        endpoint_specs=state.endpoint_specs,
    )
    tenant = state.keys.tenant(caller)
    async with get_upload_slots(request).slot():
        try:
            parser = BatchParser(request.headers.get("content-type", ""), rules)
            lines = _owned(state, tenant, await _read(request, parser, charge))
            await run_in_threadpool(check_webhooks, lines, settings, tenant.webhook_secret)
            accepted = await batches.create(lines, tenant, state.budget)
        except BaseException as err:
            await asyncio.shield(charge.refund())  # refused: the batch counts for nothing
            if isinstance(err, BatchRefused):
                raise HTTPException(err.status_code, detail=str(err)) from None
            raise
    counted.submitted.inc(len(lines))
    response.headers["Location"] = f"{PATH}/{accepted.batch_id}"
    return accepted


def _owned(state: StateDep, tenant: Tenant, lines: list[BatchLine]) -> list[BatchLine]:
    """The lines stamped with the caller's tenant, after the tenant's own checks (422)."""
    problems = []
    for line in lines:
        problem = tenant_problem(tenant, line.request, state.endpoint_specs)
        if problem is not None:
            problems.append(f"{line.where}: {problem}")
    if problems:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="; ".join(problems[:10]))
    return [
        replace(line, request=line.request.model_copy(update={"tenant": tenant.name}))
        for line in lines
    ]


async def _read(request: Request, parser: BatchParser, charge: Charge) -> list[BatchLine]:
    """The body's requests, each charged to the rate limit before it is parsed.

    Read as it arrives: a refusal (a line past the limit, the rate limit, not UTF-8) stops
    reading there; the rest of the body is never parsed.
    """
    async for chunk in request.stream():
        await _check(parser.feed(chunk), parser, charge)
    for items in parser.end():
        await _check(items, parser, charge)
    return parser.result()


async def _check(items: list[Item], parser: BatchParser, charge: Charge) -> None:
    if items:
        await charge(len(items))
        # Thousands of lines a chunk at most: parse off the event loop.
        await run_in_threadpool(parser.check, items)


@router.get("/{batch_id}", response_model=BatchStatus, responses=_ONE_BATCH)
async def get_batch(
    batch_id: BatchId, state: StateDep, batches: BatchesDep, caller: CallerDep
) -> BatchStatus:
    """The batch's state and its tasks counted by state."""
    check_batch_owner(state, caller, batch_id, await batches.owner(batch_id))
    return _found(batch_id, await batches.status(batch_id))


@router.get("/{batch_id}/results", response_class=NdjsonResponse, responses=_RESULTS)
async def get_batch_results(
    batch_id: BatchId, state: StateDep, batches: BatchesDep, caller: CallerDep
) -> NdjsonResponse:
    """One JSON line per request, in input order, streamed (unfinished tasks included)."""
    check_batch_owner(state, caller, batch_id, await batches.owner(batch_id))
    found = _found(batch_id, await batches.results(batch_id))
    # The total lets a client tell a complete download from one cut short.
    return NdjsonResponse(found.lines, media_type=NDJSON, headers={TOTAL_HEADER: str(found.total)})


@router.delete("/{batch_id}", response_model=BatchStatus, responses=_ONE_BATCH)
async def cancel_batch(
    batch_id: BatchId, state: StateDep, batches: BatchesDep, caller: CallerDep
) -> BatchStatus:
    """Cancel every task of the batch not final yet; queued ones never reach the endpoint."""
    check_batch_owner(state, caller, batch_id, await batches.owner(batch_id))
    return _found(batch_id, await batches.cancel(batch_id))


def _found(batch_id: str, value: _T | None) -> _T:
    if value is None:
        raise no_batch(batch_id)
    return value
