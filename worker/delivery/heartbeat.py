"""The tasks this worker process runs right now: who runs them, and how to stop them.

- A **running claim** (``genqueue:running:<id>``, set NX with a TTL) makes sure a task runs
  once at a time: a copy delivered while its first run is alive is dropped.
- A **heartbeat** renews the claims, and the scores of every message this worker holds
  unacknowledged in kombu's ``unacked_index``, so Redis hands a message to another worker only
  after its holder stopped renewing it for ``visibility_timeout_s``: a killed worker's tasks come
  back within seconds, and a live worker's never do.
- A **cancel listener** (pub/sub on :data:`worker.keys.CANCEL_CHANNEL`) stops the endpoint call
  of a task cancelled while it runs, by raising :class:`TaskCancelled` in its greenlet (gevent
  pool); with other pools the call finishes and its result is discarded.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis

from worker import keys, lua
from worker.errors import TaskCancelled
from worker.limits import presence
from worker.redis_io.redis_outage import (
    REDIS_DOWN,
    OutagePolicy,
    RedisOutage,
    note_failure,
    recently_down,
    ride_out,
)

log = logging.getLogger(__name__)


def _current_greenlet() -> Any | None:
    try:
        import gevent
        from gevent import monkey
    except ImportError:
        return None
    if not monkey.is_module_patched("socket"):
        return None
    return gevent.getcurrent()


class RunningTasks:
    """This process's running claims and cancellable calls.

    :param client: the Redis client.
    :param claim_ttl_s: how long a claim outlives a worker that stopped renewing it.
    """

    def __init__(
        self, client: redis.Redis, claim_ttl_s: float, outage: OutagePolicy | None = None
    ) -> None:
        self._redis = client
        self._outage = outage or OutagePolicy()
        self.claim_ttl_ms = int(claim_ttl_s * 1000)
        self._claims: dict[str, str] = {}
        self._calls: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._release_claim = lua.named(client, "worker.delivery", "release_claim")
        self._renew_claims = lua.named(client, "worker.delivery", "renew_claims")
        #: Held by a renewal while it runs: a claim given up meanwhile is not taken again.
        self._renewing = threading.Lock()
        self._listener: threading.Thread | None = None
        self._listener_lock = threading.Lock()
        self._heartbeat: Heartbeat | None = None

    def new_token(self) -> str:
        """A running claim's token, named by this process's presence id: a sweep that finds
        the process gone releases its claims (:mod:`worker.delivery.dead_holders`)."""
        return presence.for_process(self._redis).token()

    def hold(self, task_id: str, token: str) -> None:
        self._claims[task_id] = token
        if self._heartbeat is None:
            self._heartbeat = Heartbeat(self.claim_ttl_ms / 3000, [self.renew])
            self._heartbeat.start()

    def take(self, task_id: str) -> str | None:
        """Stop renewing the claim of ``task_id`` and return its token, for a script that
        releases it in Redis (:meth:`worker.delivery.task_scripts.Lifecycle.finish`)."""
        with self._renewing:
            return self._claims.pop(task_id, None)

    def release(self, task_id: str) -> None:
        with self._renewing:
            token = self._claims.pop(task_id, None)
        if token is not None:
            try:
                # Ridden out: a claim left behind would drop the task's retry as a duplicate.
                ride_out(
                    lambda: self._release_claim(
                        keys={"running_key": keys.running(task_id)}, args={"token": token}
                    ),
                    "releasing its running claim",
                    self._outage,
                )
            except (RedisOutage, redis.RedisError):
                log.warning("could not release the running claim of %s; it expires", task_id)

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()

    def renew(self) -> None:
        """Push the expiry of every claim this process holds (taking again one that lapsed
        while Redis was away)."""
        with self._renewing:
            held = dict(self._claims)
            if not held:
                return
            self._renew_claims(
                keys={"running_keys": [keys.running(task_id) for task_id in held]},
                args={"ttl_ms": self.claim_ttl_ms, "tokens": list(held.values())},
            )

    @contextlib.contextmanager
    def cancellable(self, task_id: str) -> Iterator[None]:
        """Within the block, a cancellation of ``task_id`` interrupts this greenlet."""
        greenlet = _current_greenlet()
        if greenlet is None:
            yield
            return
        self._ensure_listener()
        with self._lock:
            self._calls[task_id] = greenlet
        try:
            yield
        finally:
            with self._lock:
                self._calls.pop(task_id, None)

    def cancel(self, task_id: str) -> bool:
        """Interrupt the call of ``task_id`` if this process runs it."""
        import gevent

        with self._lock:
            greenlet = self._calls.pop(task_id, None)
        if greenlet is None:
            return False
        error = TaskCancelled("the task was cancelled while it ran")
        kill = getattr(greenlet, "kill", None)
        if kill is not None:
            kill(error, block=False)  # a gevent.Greenlet: do not wait for it to unwind
        else:
            gevent.kill(greenlet, error)
        return True

    def _ensure_listener(self) -> None:
        if self._listener is not None and self._listener.is_alive():
            return
        with self._listener_lock:  # one listener, however many tasks start at once (guard.py)
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(
                    target=self._listen, name="genqueue-cancel-listener", daemon=True
                )
                self._listener.start()

    def _listen(self) -> None:
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(keys.CANCEL_CHANNEL)
                for message in pubsub.listen():
                    task_id = message["data"].decode()
                    if self.cancel(task_id):
                        log.info("task %s cancelled while running: endpoint call aborted", task_id)
            except redis.RedisError:
                time.sleep(1)  # Redis is away; subscribe again when it is back.
            finally:
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()


#: After a failed beat (Redis away), the next comes this soon: the claims and messages held
#: here are renewed as soon as Redis is back, before other workers take them for abandoned.
RETRY_BEAT_S = 0.25


class Heartbeat:
    """Calls ``beats`` every ``interval_s`` in a daemon thread (a greenlet under gevent)."""

    def __init__(self, interval_s: float, beats: list[Callable[[], None]]) -> None:
        self._interval_s = interval_s
        self._beats = beats
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="genqueue-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        wait_s = self._interval_s
        while not self._stopped.wait(wait_s):
            wait_s = self._interval_s
            for beat in self._beats:
                try:
                    beat()
                except REDIS_DOWN as err:  # retried soon, and every beat after it at once
                    note_failure()
                    wait_s = min(self._interval_s, RETRY_BEAT_S)
                    log.warning("heartbeat %s: Redis is unreachable: %s", _name(beat), err)
                    break
                except Exception:  # a missed beat is retried at the next one
                    log.warning("heartbeat %s failed", _name(beat), exc_info=True)


def _name(beat: Callable[[], None]) -> str:
    return str(getattr(beat, "__name__", beat))


def unacked_renewer(client: redis.Redis, channel: Any) -> Callable[[], None]:
    """A beat that renews the ``unacked_index`` scores of the messages ``channel`` holds."""

    def renew_unacked() -> None:
        tags = list(channel.qos._delivered)
        if not tags:
            return
        now = time.time()
        client.zadd(channel.unacked_index_key, dict.fromkeys(tags, now), xx=True)

    return renew_unacked


def restorer(channel: Any, grace_s: float) -> Callable[[], None]:
    """A beat that hands the messages of dead workers back to the queue (kombu's sweep);
    not within ``grace_s`` of finding Redis away, while live workers renew theirs again."""

    def restore_stale() -> None:
        if recently_down(grace_s):
            return
        channel.qos.restore_visible(num=channel.unacked_restore_limit, interval=1)

    return restore_stale
