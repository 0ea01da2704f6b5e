"""``GET /v1/tasks/{task_id}/stream``: a task's tokens as server-sent events.

``event: queued`` (``data: {"queue_position": ..., "estimated_start_s": ...}``) while the task
waits, when its place changes (looked at once a second); ``event: token``
(``data: {"text": "..."}``, with an ``id:``) per piece, ``event: restart``
when a broken call is retried (the text so far is to be discarded), then ``event: done`` with
the task's status, the same JSON as ``GET /v1/tasks/{task_id}``. ``Last-Event-ID`` resumes
after the event it names. See :mod:`api_producer.token_follow`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, status
from fastapi.responses import StreamingResponse

from api_producer.deps import CallerDep, KeyFirstRoute, StateDep
from api_producer.ownership import owned_task
from api_producer.routes.tasks import ANY_ROUTE, TaskId, problem
from api_producer.token_follow import (
    EVENT_ID,
    Event,
    Expired,
    Piece,
    Queued,
    StreamSlot,
    TokenFollower,
    TooManyStreams,
)
from worker.contract import TaskStatus

#: What a client refused for too many streams is told to wait, in seconds.
STREAMS_RETRY_AFTER_S = 1
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

router = APIRouter(
    prefix="/v1/tasks", tags=["tasks"], responses=ANY_ROUTE, route_class=KeyFirstRoute
)

LastEventId = Annotated[
    str | None,
    Header(alias="Last-Event-ID", max_length=64, description="resume after this event id"),
]


def sse(event: Event) -> bytes:
    """One server-sent event (``None``: a keep-alive comment)."""
    if event is None:
        return b": keep-alive\n\n"
    if isinstance(event, TaskStatus):
        return f"event: done\ndata: {event.model_dump_json()}\n\n".encode()
    if isinstance(event, Queued):
        place = {
            "queue_position": event.queue_position,
            "estimated_start_s": event.estimated_start_s,
        }
        return f"event: queued\ndata: {json.dumps(place)}\n\n".encode()
    if isinstance(event, Expired):
        problem = json.dumps({"type": "task_expired", "message": event.message})
        return f"event: error\ndata: {problem}\n\n".encode()
    data = json.dumps({"text": event.text}) if event.kind == "token" else "{}"
    return f"id: {event.event_id}\nevent: {event.kind}\ndata: {data}\n\n".encode()


async def _events(
    follower: TokenFollower, task_id: str, last_id: str | None, slot: StreamSlot
) -> AsyncIterator[bytes]:
    async for event in follower.follow(task_id, last_id, slot, queued=True):
        yield sse(event)


@router.get(
    "/{task_id}/stream",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the task's events"},
        404: problem("no such task"),
        429: problem("this API process already follows GENQUEUE_API_MAX_STREAMS streams"),
    },
)
async def stream_task(
    task_id: TaskId, state: StateDep, caller: CallerDep, last_event_id: LastEventId = None
) -> StreamingResponse:
    """Follow a task's tokens as they come (a task still queued is waited for)."""
    if last_event_id is not None and not EVENT_ID.match(last_event_id):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail="Last-Event-ID: not an event id of this stream (like 1700000000000-0)",
        )
    # Another tenant's task is the 404 of an unknown id.
    await owned_task(state, caller, task_id, before_wait=True)
    follower = state.tokens
    try:
        slot = follower.reserve()
    except TooManyStreams:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"this API process already follows {follower.max_streams} streams "
            f"(GENQUEUE_API_MAX_STREAMS): retry in {STREAMS_RETRY_AFTER_S}s",
            headers={"Retry-After": str(STREAMS_RETRY_AFTER_S)},
        ) from None
    return StreamingResponse(
        _events(follower, task_id, last_event_id, slot),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


__all__ = ["Piece", "router", "sse"]
