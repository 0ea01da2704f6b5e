"""Who may reach a task or a batch: the tenant that submitted it, and admins.

Every route that names a task or a batch asks here first. Another tenant's id is answered
exactly as an id that never existed (the same ``404`` and words), so an id cannot be probed.
"""

from __future__ import annotations

from fastapi import HTTPException, status

from api_producer.deps import ApiState
from worker.contract import GenerationRequest, TaskStatus
from worker.endpoints.config import Endpoints
from worker.tenancy.tenants import Tenant


def may_reach(state: ApiState, caller: str, owner: str) -> bool:
    """Whether ``caller`` (a tenant name) may read and cancel what ``owner`` submitted."""
    return caller == owner or state.keys.tenant(caller).admin


def no_task(task_id: str) -> HTTPException:
    """The one answer for an unknown task and for another tenant's."""
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no task {task_id}")


def no_batch(batch_id: str) -> HTTPException:
    """The one answer for an unknown batch and for another tenant's."""
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no batch {batch_id}")


async def owned_task(
    state: ApiState, caller: str, task_id: str, before_wait: bool = False
) -> TaskStatus:
    """The task's status if ``caller`` may reach it; else the ``404`` of an unknown id.

    ``before_wait``: the read opens a wait (``?wait=``, a stream), so it takes turns with the
    other waits' reads (:meth:`~api_producer.store.TaskStore.get_owned`).
    """
    found = await state.store.get_owned(task_id, throttled=before_wait)
    if found is None or not may_reach(state, caller, found.owner):
        raise no_task(task_id)
    return found.status


def tenant_problem(
    tenant: Tenant, request: GenerationRequest, endpoints: Endpoints | None
) -> str | None:
    """Why ``tenant`` may not submit ``request`` (a 422's words), or ``None``."""
    if request.tenant is not None:
        return "tenant: set by genqueue from the API key, it cannot be given"
    if request.priority > tenant.max_priority:
        return f"priority: at most {tenant.max_priority} for this tenant"
    endpoint = request.endpoint or (endpoints.default if endpoints is not None else None)
    if endpoint is not None and not tenant.may_use(endpoint):
        return f"endpoint {endpoint!r} is not one this tenant may use"
    return None


def check_batch_owner(state: ApiState, caller: str, batch_id: str, owner: str | None) -> None:
    """Nothing if ``caller`` may reach the batch of ``owner`` (``None``: no such batch); else
    the ``404`` of an unknown id."""
    if owner is None or not may_reach(state, caller, owner):
        raise no_batch(batch_id)
