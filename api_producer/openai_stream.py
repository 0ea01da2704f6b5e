"""An OpenAI stream read from a task's token stream: OpenAI's chunks, then ``[DONE]``.

A task that sends no token and does not end within ``GENQUEUE_API_OPENAI_WAIT_S`` ends the
stream with an error event naming it (the task carries on); once tokens flow, the stream lasts
as long as the task. An OpenAI stream cannot take back what it sent: a call that breaks after
text was sent ends the stream with an error event, while the task itself is retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from api_producer.deps import ApiState
from api_producer.openai_format import (
    DONE,
    Kind,
    OpenAIError,
    chunk,
    created_of,
    data,
    error_body,
    failure,
    served_by,
    usage_chunk,
)
from api_producer.token_follow import Expired, Piece, StreamSlot
from worker.contract import TaskState


async def stream(
    kind: Kind, state: ApiState, task_id: str, model: str, include_usage: bool, slot: StreamSlot
) -> AsyncIterator[bytes]:
    """OpenAI's chunks from the task's token stream, then ``[DONE]`` (or an error event)."""
    created = created_of(None)
    sent = False
    if kind == "chat":
        yield chunk(kind, task_id, model, created, "")
    async for event in _until_started(state, task_id, slot):
        if event is None:
            yield b": keep-alive\n\n"
        elif isinstance(event, OpenAIError):
            yield data(event.body())
        elif isinstance(event, Expired):
            yield data(error_body(event.message, "not_found_error", "task_expired"))
        elif isinstance(event, Piece):
            if event.kind == "token":
                sent = True
                yield chunk(kind, task_id, model, created, event.text)
            elif sent:  # an OpenAI stream cannot take back what it sent: end it, failed
                message = f"task {task_id}: the endpoint call broke mid-stream and is retried"
                yield data(error_body(message, "upstream_error", "restarted"))
                return
        elif event.status is TaskState.SUCCEEDED and event.result is not None:
            finish = event.result.finish_reason or "stop"
            model = served_by(event, model)  # the last chunks name the endpoint that served
            yield chunk(kind, task_id, model, created, None if kind == "chat" else "", finish)
            if include_usage:
                yield usage_chunk(kind, event, model, created)
            yield DONE
        else:
            yield data(failure(event).body())


async def _until_started(state: ApiState, task_id: str, slot: StreamSlot) -> AsyncIterator[Any]:
    """The task's events; a task with no token and no end within GENQUEUE_API_OPENAI_WAIT_S
    ends the stream with an error naming it (it carries on, as a timed-out wait's does)."""
    wait_s = state.settings.api_openai_wait_s
    deadline = asyncio.get_running_loop().time() + wait_s
    events = state.tokens.follow(task_id, None, slot)
    started = False
    try:
        while True:
            left_s = deadline - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(None if started else max(left_s, 0.0)):
                    event = await anext(events)
            except StopAsyncIteration:
                return
            except TimeoutError:
                message = (
                    f"task {task_id} did not start within {wait_s:g}s "
                    f"(GENQUEUE_API_OPENAI_WAIT_S); it carries on: GET /v1/tasks/{task_id}"
                )
                yield OpenAIError(504, message, "timeout", "timeout")
                return
            started = started or (event is not None)
            yield event
    finally:
        await events.aclose()
