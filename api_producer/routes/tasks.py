"""``/v1/tasks``: submit, read, wait for and cancel generation tasks."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from api_producer.deps import CallerDep, KeyFirstRoute, StateDep
from api_producer.ownership import no_task, owned_task, tenant_problem
from api_producer.producers.direct import Accepted, IdempotencyConflict
from api_producer.rate_limit import RateLimitDep
from api_producer.routes.metrics import MetricsDep
from api_producer.waiters import TooManyWaiters
from worker.contract import GenerationRequest, TaskAccepted, TaskStatus
from worker.endpoints.params import request_problem
from worker.tenancy.tenants import Tenant
from worker.webhooks.sender import WebhookRefused, check_webhook_url


class Problem(BaseModel):
    """An error answer: what went wrong, in words."""

    detail: str


class InvalidInput(BaseModel):
    """A 422: a message, or FastAPI's list of ``{type, loc, msg}`` (never the input itself)."""

    detail: str | list[dict[str, JsonValue]]


def problem(description: str, **extra: Any) -> dict[str, Any]:
    return {"model": Problem, "description": description, **extra}


# The error statuses each route may answer, so the OpenAPI document lists every one.
ANY_ROUTE: dict[int | str, dict[str, Any]] = {
    401: problem("missing or invalid API key"),
    422: {"model": InvalidInput, "description": "invalid input (unknown fields included)"},
    503: problem("Redis cannot be reached"),
}
_SUBMIT: dict[int | str, dict[str, Any]] = {
    400: problem("the body could not be read (not UTF-8 text)"),
    409: problem("this Idempotency-Key was used with a different body"),
    413: problem("the request body is larger than GENQUEUE_API_MAX_BODY_BYTES"),
    429: problem(
        "over the tenant's requests per minute (GENQUEUE_API_RATE_LIMIT_PER_MINUTE or its "
        "requests_per_minute) or its tokens_per_day (type quota_exceeded); nothing was enqueued",
        headers={
            "Retry-After": {
                "description": "seconds until the limit resets",
                "schema": {"type": "integer"},
            }
        },
    ),
}
_ONE_TASK: dict[int | str, dict[str, Any]] = {404: problem("no such task")}
_WAIT: dict[int | str, dict[str, Any]] = {
    **_ONE_TASK,
    429: problem(
        "with ?wait=: this API process already holds GENQUEUE_API_MAX_WAITERS waits; "
        "read the status without ?wait= or retry after Retry-After",
        headers={"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    ),
}
#: What a wait refused for too many waiters is told to wait, in seconds.
WAIT_RETRY_AFTER_S = 1

router = APIRouter(
    prefix="/v1/tasks", tags=["tasks"], responses=ANY_ROUTE, route_class=KeyFirstRoute
)

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255, description="Same key, same body: same task."),
]
TASK_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
TaskId = Annotated[str, Field(pattern=TASK_ID_PATTERN)]


class BatchRequest(BaseModel):
    """Up to ``GENQUEUE_API_BATCH_MAX`` requests, enqueued all together or not at all."""

    model_config = ConfigDict(extra="forbid")

    requests: list[GenerationRequest] = Field(min_length=1)


class BatchAccepted(BaseModel):
    tasks: list[TaskAccepted]


async def enqueue(
    state: StateDep, caller: Tenant, requests: list[GenerationRequest], key: str | None
) -> Accepted:
    """Hold the tenant's token budget, then enqueue; the hold is given back if that fails."""
    scoped_key = f"{caller.name}:{key}" if key is not None else None
    reservation = await state.budget.reserve(caller, requests) if state.budget else None
    try:
        accepted = await state.enqueuer.submit_many(requests, scoped_key, reservation)
    except BaseException as err:
        if state.budget is not None:
            await asyncio.shield(state.budget.release(caller, reservation))
        if isinstance(err, IdempotencyConflict):
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(err)) from err
        raise
    if accepted.replayed and state.budget is not None:
        await state.budget.release(caller, reservation)  # nothing new was enqueued
    return accepted


def owned_requests(
    state: StateDep, caller: Tenant, requests: list[GenerationRequest]
) -> list[GenerationRequest]:
    """Each request stamped with the caller's tenant, after the tenant's own checks (422)."""
    owned = []
    for request in requests:
        problem = tenant_problem(caller, request, state.endpoint_specs)
        if problem is not None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=problem)
        owned.append(request.model_copy(update={"tenant": caller.name}))
    return owned


async def _check_webhooks(
    state: StateDep, caller: Tenant, requests: list[GenerationRequest]
) -> None:
    """Refuse (422) a ``webhook_url`` this server may not post to, before anything is stored."""
    settings = state.settings
    secret = caller.webhook_secret or settings.webhook_secret
    for request in requests:
        if request.webhook_url is None:
            continue
        if secret is None or not secret.get_secret_value():
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail="webhook_url: webhooks are off on this server (no GENQUEUE_WEBHOOK_SECRET)",
            )
        try:
            # A host name is resolved: off the event loop.
            await run_in_threadpool(
                check_webhook_url, request.webhook_url, settings.webhook_allowlist
            )
        except WebhookRefused as err:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"webhook_url: {err}"
            ) from None


@router.post(
    "", status_code=status.HTTP_202_ACCEPTED, response_model=TaskAccepted, responses=_SUBMIT
)
async def submit_task(
    body: GenerationRequest,
    response: Response,
    state: StateDep,
    caller: CallerDep,
    charge: RateLimitDep,
    counted: MetricsDep,
    idempotency_key: IdempotencyKey = None,
) -> TaskAccepted:
    """Enqueue one generation task."""
    tenant = state.keys.tenant(caller)
    requests = owned_requests(state, tenant, [body])
    check_request(state, body)
    await _check_webhooks(state, tenant, requests)
    await charge(1)
    try:
        accepted = await enqueue(state, tenant, requests, idempotency_key)
    except BaseException:
        await asyncio.shield(charge.refund())
        raise
    if not accepted.replayed:
        counted.submitted.inc()
    task_id = accepted.task_ids[0]
    response.headers["Location"] = f"/v1/tasks/{task_id}"
    return TaskAccepted(task_id=task_id)


@router.post(
    "/batch", status_code=status.HTTP_202_ACCEPTED, response_model=BatchAccepted, responses=_SUBMIT
)
async def submit_batch(
    body: BatchRequest,
    state: StateDep,
    caller: CallerDep,
    charge: RateLimitDep,
    counted: MetricsDep,
    idempotency_key: IdempotencyKey = None,
) -> BatchAccepted:
    """Enqueue several tasks: all of them, in order, or none (any invalid one refuses all)."""
    limit = state.settings.api_batch_max
    if len(body.requests) > limit:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"a batch holds at most {limit} requests, this one has {len(body.requests)}",
        )
    tenant = state.keys.tenant(caller)
    requests = owned_requests(state, tenant, list(body.requests))
    for request in requests:
        check_request(state, request)
    await _check_webhooks(state, tenant, requests)
    await charge(len(requests))
    try:
        accepted = await enqueue(state, tenant, requests, idempotency_key)
    except BaseException:
        await asyncio.shield(charge.refund())
        raise
    if not accepted.replayed:
        counted.submitted.inc(len(accepted.task_ids))
    return BatchAccepted(tasks=[TaskAccepted(task_id=task_id) for task_id in accepted.task_ids])


@router.get("/{task_id}", response_model=TaskStatus, responses=_WAIT)
async def get_task(
    task_id: TaskId,
    state: StateDep,
    caller: CallerDep,
    wait: Annotated[float, Query(ge=0, description="seconds to wait for a final status")] = 0,
) -> TaskStatus:
    """A task's status; with ``?wait=S``, held up to S seconds for a final one."""
    timeout_s = min(wait, state.settings.api_wait_max_s)
    found_now = await owned_task(state, caller, task_id, before_wait=timeout_s > 0)
    if timeout_s <= 0 or found_now.status.is_final:
        return found_now
    try:
        found = await state.store.wait(task_id, timeout_s)
    except TooManyWaiters:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"this API process already holds {state.settings.api_max_waiters} waits "
            "(GENQUEUE_API_MAX_WAITERS): read the status without ?wait= or retry in "
            f"{WAIT_RETRY_AFTER_S}s",
            headers={"Retry-After": str(WAIT_RETRY_AFTER_S)},
        ) from None
    if found is None:
        raise no_task(task_id)
    return found


@router.delete("/{task_id}", response_model=TaskStatus, responses=_ONE_TASK)
async def cancel_task(task_id: TaskId, state: StateDep, caller: CallerDep) -> TaskStatus:
    """Cancel a task: a queued one never reaches the endpoint."""
    await owned_task(state, caller, task_id)
    found = await state.store.cancel(task_id)
    if found is None:
        raise no_task(task_id)
    return found


def check_request(state: StateDep, request: GenerationRequest) -> None:
    """422 for what the API can tell is wrong before anything is stored (a past deadline, an
    unknown template or endpoint, params the endpoint would refuse)."""
    if request.deadline is not None and request.deadline <= datetime.now(UTC):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail="the deadline is already in the past"
        )
    known = state.templates
    if known is not None and request.template not in known:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"unknown template {request.template!r} (known: {', '.join(sorted(known))})",
        )
    endpoints = state.endpoints
    if request.endpoint is not None and endpoints is not None and request.endpoint not in endpoints:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"unknown endpoint {request.endpoint!r} "
            f"(configured: {', '.join(sorted(endpoints))})",
        )
    problem = request_problem(state.endpoint_specs, request) if state.endpoint_specs else None
    if problem is not None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=problem)
