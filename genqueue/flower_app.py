"""Flower's Celery app: genqueue's (``worker.celery_app``), with Flower's count of a queue's
messages made to include those sorted into its backlog.

genqueue's fetch moves the messages it meets off a queue's Redis lists into a list per tenant
(``worker.delivery.backlog``), so Flower's broker page, which counts the lists alone (``LLEN``
per priority step), would show a 50,000-task backlog as a few messages. ``genqueue flower``
runs ``celery -A genqueue.flower_app flower``; :func:`count_backlogs` replaces Flower's
``RedisBase.queues`` (Flower 2.x) with one that also reads ``genqueue:backlog-size``, in the
same pipeline.
"""

from __future__ import annotations

from typing import Any

from flower.utils import broker as flower_broker

from worker import keys
from worker.celery_app import app as app
from worker.delivery import backlog

#: Flower's method this module replaces (its source is checked against Flower 2.2.0's by
#: tests/integration/observability/test_flower_broker.py).
FLOWERS_QUEUES = flower_broker.RedisBase.queues


async def queues(self: Any, names: Any) -> list[dict[str, Any]]:
    """Each queue's messages: in its lists (as Flower counts them) and in their backlogs."""
    names = list(names)
    lists = {
        name: [self.broker_prefix + self._q_for_pri(name, step) for step in self.priority_steps]
        for name in names
    }
    try:
        async with self.redis.pipeline() as pipeline:
            for name in names:
                for queue_list in lists[name]:
                    pipeline.llen(queue_list)
                pipeline.hmget(keys.backlog_size(), *lists[name])
            answers = iter(await pipeline.execute())
        counted = []
        for name in names:
            in_lists = sum(next(answers) for _ in lists[name])
            counted.append({"name": name, "messages": in_lists + backlog.size_of(next(answers))})
        return counted
    finally:
        if hasattr(self.redis, "aclose"):
            await self.redis.aclose()
        else:
            await self.redis.close()


def count_backlogs() -> None:
    flower_broker.RedisBase.queues = queues  # type: ignore[method-assign]


count_backlogs()
