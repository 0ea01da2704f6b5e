"""The Celery message of a ``genqueue.generate`` task and its task-sent event, built by hand.

The bytes are those ``Celery.send_task`` writes through kombu's Redis transport (task protocol
2, JSON, base64 body), so workers, Flower and plain Celery clients see no difference. Building
them here lets the producer put the record, the message and the event in one Redis
transaction instead of three round trips through kombu's producer pool and its locks.
``tests/integration/api/test_wire.py`` compares the two byte for byte (ids and clocks aside).
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.utils.nodenames import anon_nodename
from celery.utils.time import utcoffset
from kombu.utils.json import dumps

from worker import keys
from worker.keys import EVENT_EXCHANGE, EVENT_MULTI_ROUTING_KEY, EVENT_ROUTING_KEY

#: kombu's delivery modes: tasks are persistent, events transient.
PERSISTENT = 2
TRANSIENT = 1
_NO_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@dataclass(frozen=True)
class Outgoing:
    """One task as Redis receives it: ``LPUSH list_key message`` and ``PUBLISH topic event``."""

    list_key: str
    message: str
    topic: str
    event: str
    #: The event's own fields, for a ``task.multi`` of several (:meth:`MessageBuilder.multi_event`).
    event_fields: dict[str, Any]


def _encoded(payload: Any) -> str:
    return base64.b64encode(dumps(payload).encode()).decode()


class MessageBuilder:
    """Builds :class:`Outgoing` tasks as ``app.send_task(..., producer=...)`` would send them.

    :param app: the sending Celery app: its per-thread reply-to id and its Lamport clock.
    :param db: the Redis database number (part of the event's channel name).
    """

    def __init__(self, app: Celery, db: int) -> None:
        self._app = app
        self._db = db
        self._topic = keys.event_topic(db)
        self._pid = -1
        self._hostname = ""

    def _node(self) -> str:
        # Celery's "gen<pid>@<host>"; recomputed in a forked child.
        if self._pid != os.getpid():
            self._pid, self._hostname = os.getpid(), anon_nodename()
        return self._hostname

    def build(
        self,
        task_id: str,
        name: str,
        kwargs: dict[str, Any],
        queue: str,
        priority: int,
        kwargsrepr: str,
    ) -> Outgoing:
        """The message of one task sent by name with keyword arguments only (``argsrepr "()"``)."""
        node = self._node()
        headers: dict[str, Any] = {
            "lang": "py",
            "task": name,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": "()",
            "kwargsrepr": kwargsrepr,
            "origin": node,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        properties = {
            "correlation_id": task_id,
            "reply_to": self._app.thread_oid,
            "argsrepr": "()",
            "kwargsrepr": kwargsrepr,
            "delivery_mode": PERSISTENT,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        }
        message = {
            "body": _encoded([[], kwargs, _NO_EMBED]),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        }
        fields = self._sent_fields(node, task_id, name, kwargsrepr, queue)
        event = _event(node, fields, EVENT_ROUTING_KEY)
        return Outgoing(
            keys.queue_list(queue, priority), dumps(message), self._topic, event, fields
        )

    def multi_event(self, events: list[dict[str, Any]]) -> tuple[str, str]:
        """The channel and message of several task events in one publish: a ``task.multi``
        list, as Celery's EventDispatcher sends a buffered group, which every event receiver
        (Flower's included) unpacks."""
        topic = keys.event_topic(self._db, EVENT_MULTI_ROUTING_KEY)
        return topic, _event(self._node(), events, EVENT_MULTI_ROUTING_KEY)

    def _sent_fields(
        self, node: str, task_id: str, name: str, kwargsrepr: str, queue: str
    ) -> dict[str, Any]:
        """Celery's ``task-sent`` event, as its EventDispatcher publishes it."""
        return {
            "hostname": node,
            "utcoffset": utcoffset(),
            "pid": self._pid,
            "clock": self._app.clock.forward(),
            "uuid": task_id,
            "root_id": task_id,
            "parent_id": None,
            "name": name,
            "args": "()",
            "kwargs": kwargsrepr,
            "retries": 0,
            "eta": None,
            "expires": None,
            "queue": queue,
            "exchange": "",
            "routing_key": queue,
            "timestamp": time.time(),
            "type": "task-sent",
        }


def _event(node: str, body: Any, routing_key: str) -> str:
    """An event message as kombu publishes it on Celery's ``celeryev`` fanout exchange."""
    event = {
        "body": _encoded(body),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": node},
        "properties": {
            "delivery_mode": TRANSIENT,
            "delivery_info": {"exchange": EVENT_EXCHANGE, "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return dumps(event)
