"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from api_producer.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The API process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis is unreachable"}})
async def readyz(state: StateDep) -> JSONResponse:
    """Ready when Redis answers (and the results' Redis, ``GENQUEUE_RESULT_REDIS_URL``)."""
    try:
        await state.store.ping()
    except (RedisError, OSError):
        return JSONResponse({"status": "unavailable", "detail": "Redis is unreachable"}, 503)
    return JSONResponse({"status": "ok"})
