"""``/v1/usage``: the caller's tasks, tokens and GPU-seconds by UTC day and endpoint."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status

from api_producer.deps import CallerDep, KeyFirstRoute, StateDep
from api_producer.routes.tasks import ANY_ROUTE, problem
from api_producer.usage import UsageReader, UsageReport

router = APIRouter(
    prefix="/v1/usage", tags=["usage"], responses=ANY_ROUTE, route_class=KeyFirstRoute
)

_USAGE: dict[int | str, dict[str, Any]] = {
    403: problem("tenant= names another tenant and the caller is not an admin"),
}


def get_reader(request: Request) -> UsageReader:
    reader: UsageReader = request.app.state.genqueue_usage
    return reader


@router.get("", response_model=UsageReport, response_model_by_alias=True, responses=_USAGE)
async def get_usage(
    request: Request,
    state: StateDep,
    caller: CallerDep,
    from_: Annotated[date | None, Query(alias="from", description="first UTC day")] = None,
    to: Annotated[date | None, Query(description="last UTC day (default: today)")] = None,
    tenant: Annotated[str | None, Query(description="admins: one tenant's usage")] = None,
) -> UsageReport:
    """The caller's usage (an admin's: every tenant's, or ``tenant``'s) from ``from`` to ``to``."""
    last = to or datetime.now(UTC).date()
    first = from_ or last
    span = (last - first).days + 1
    retention = state.settings.usage_retention_days
    if span < 1 or span > retention:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"from must be on or before to, at most {retention} days apart "
            "(GENQUEUE_USAGE_RETENTION_DAYS)",
        )
    reader = get_reader(request)
    admin = state.keys.tenant(caller).admin
    if tenant is not None and tenant != caller and not admin:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="only an admin may read another tenant's usage"
        )
    if tenant is not None:
        tenants = [tenant]
    elif admin:
        tenants = await reader.tenants_between(first, last)
    else:
        tenants = [caller]
    rows = await reader.rows(tenants, first, last)
    return UsageReport.model_validate({"from": first, "to": last, "usage": rows})
