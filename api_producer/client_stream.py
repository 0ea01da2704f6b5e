"""Reading ``GET /v1/tasks/{id}/stream`` from Python: the events as text pieces, restarts and
the final status (used by :meth:`api_producer.client.GenQueueClient.stream`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import requests

from worker.contract import TaskStatus


@dataclass(frozen=True)
class Restart:
    """The call that sent the pieces so far broke and is retried: discard the text so far."""

    event_id: str | None = None


class StreamExpired(Exception):
    """The stream's ``error`` event: the task expired while it was followed."""


#: What :meth:`~api_producer.client.GenQueueClient.stream` yields: pieces of text, restarts,
#: and last the task's final status.
StreamItem = str | Restart | TaskStatus


def stream_items(response: requests.Response) -> Iterator[StreamItem]:
    """The items of an open event stream, until ``done``."""
    name, event_id, data = "message", None, ""
    for line in response.iter_lines(chunk_size=None, decode_unicode=True):
        if line.startswith(":"):
            continue
        if line:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "id":
                event_id = value
            elif field == "data":
                data = value
            continue
        if data:
            if name == "done":
                yield TaskStatus.model_validate_json(data)
                return
            if name == "error":
                raise StreamExpired(str(json.loads(data).get("message", "the task expired")))
            if name == "restart":
                yield Restart(event_id)
            elif name == "token":
                yield str(json.loads(data)["text"])
        name, event_id, data = "message", None, ""
