"""The messages of a worker process known dead go back to the queue at once.

kombu hands an unacknowledged message back once its score in ``unacked_index`` is older than
the visibility timeout (30 s), which the live holder's heartbeat keeps pushing. A SIGKILLed
worker's tasks waited that long, and longer for one taken again by a process killed in turn.

Redis knows sooner: a killed process's presence connection (:mod:`worker.limits.presence`) is
closed by its kernel at once. So each worker process's heartbeat writes the delivery tags it
holds into a set of its own (:func:`worker.keys.held_messages`, named by its presence id) and
its time into :func:`worker.keys.message_holders`. A holder whose time is older than
``HOLDER_LATE_BEATS`` beats is looked up among the open connections; if it is not there, its
running claims are given up (their tokens start with its id: a copy handed back is not dropped
as running elsewhere), each message of its set that is still unacknowledged moves back to its
queue (kombu's own restore, one WATCH transaction each: a message acknowledged or moved
meanwhile is left alone, so two sweeps at once move nothing twice), and the set goes.

What this does not see comes back after the visibility timeout, as before: a message taken after
its holder's last beat, and every message where Redis refuses ``CLIENT LIST``. A stalled process
(``SIGSTOP``) keeps its connection open: its messages stay its own. Right after Redis was away
nobody is taken for dead (:func:`worker.redis_io.redis_outage.recently_down`): the presence
connections of live processes may not be back yet.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from worker import keys, lua
from worker.limits import presence
from worker.redis_io.redis_outage import recently_down

log = logging.getLogger(__name__)

#: A holder that has not written its set for this many heartbeats is looked up (CLIENT LIST).
HOLDER_LATE_BEATS = 1.5


def held_recorder(
    client: redis.Redis, channel: Any, process_id: str, visibility_timeout_s: float
) -> Callable[[], None]:
    """A beat that writes the tags of the messages ``channel`` holds into this process's set."""
    key, ttl_ms = keys.held_messages(process_id), int(visibility_timeout_s * 1000)

    def record_held() -> None:
        tags = list(channel.qos._delivered)
        pipe = client.pipeline(transaction=True)
        pipe.delete(key)
        if tags:
            pipe.sadd(key, *tags)
            pipe.pexpire(key, ttl_ms)
            pipe.zadd(keys.message_holders(), {process_id: int(time.time() * 1000)})
        else:
            pipe.zrem(keys.message_holders(), process_id)
        pipe.execute()

    return record_held


def dead_holder_sweeper(
    client: redis.Redis, channel: Any, interval_s: float, visibility_timeout_s: float
) -> Callable[[], None]:
    """A beat that moves back the messages of the holders whose presence connection is gone."""
    late_ms, stale_ms = int(interval_s * HOLDER_LATE_BEATS * 1000), int(visibility_timeout_s * 1000)

    def hand_back_dead() -> None:
        if recently_down(visibility_timeout_s):
            return
        now_ms = int(time.time() * 1000)
        holders = keys.message_holders()
        client.zremrangebyscore(holders, "-inf", now_ms - stale_ms)
        late = client.zrangebyscore(holders, "-inf", now_ms - late_ms)
        if not late:
            return
        live = presence.live_ids(client)
        if live is None:
            return
        for raw in late:
            holder = _text(raw)
            if holder not in live:
                moved = hand_back(client, channel, holder)
                log.warning("worker process %s is gone: %d of its messages back", holder, moved)

    return hand_back_dead


def hand_back(client: redis.Redis, channel: Any, holder: str) -> int:
    """Give up ``holder``'s running claims, then move back the still-unacknowledged messages
    of its set; how many were."""
    key = keys.held_messages(holder)
    tags = [_text(tag) for tag in client.smembers(key)]
    raw = client.hmget(channel.unacked_key, tags) if tags else []
    held = [message for message in raw if message is not None]
    task_ids = [task_id for message in held if (task_id := _task_id(message))]
    if task_ids:
        release = lua.named(client, "worker.delivery", "release_dead_claims")
        release(
            keys={"running_keys": [keys.running(task_id) for task_id in task_ids]},
            args={"prefix": f"{holder}."},
        )
    for tag in tags:
        channel.qos.restore_by_tag(tag, client)
    client.delete(key)
    client.zrem(keys.message_holders(), holder)
    return len(held)


def _task_id(unacked: Any) -> str | None:
    """The task id of an entry of kombu's unacked hash (``[message, exchange, routing_key]``)."""
    try:
        headers = json.loads(unacked)[0].get("headers") or {}
    except (ValueError, TypeError, IndexError, AttributeError):
        return None
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return task_id if isinstance(task_id, str) and task_id else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
