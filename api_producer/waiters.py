"""One Redis pub/sub connection per API process for every ``?wait=``.

Celery's Redis backend publishes each state of a task on a channel named like its result key.
A waiter registers the channel with :class:`ResultListener`; the listener subscribes once per
channel (unsubscribes when the channel's last waiter leaves) on its one connection and wakes
the channel's waiters on each message. A waiter re-reads the status after its subscription is
confirmed, so a completion published before it is never missed; after a lost connection the
listener subscribes again and, once Redis confirms, wakes every waiter to re-read, since
messages sent meanwhile are gone. A waiter also re-reads at its deadline. More than
``max_waiters`` at once raise :class:`TooManyWaiters`, never a stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import redis
import redis.asyncio as aioredis

from worker import keys
from worker.errors import GenQueueError

log = logging.getLogger(__name__)

#: Subscribed always, so the connection is open (and read) before any waiter arrives.
IDLE_CHANNEL = keys.WAITERS_CHANNEL
#: Seconds between attempts to reach Redis again, doubling up to the last.
RECONNECT_DELAYS_S = (0.1, 0.2, 0.5, 1.0, 2.0)


class TooManyWaiters(GenQueueError):
    """Raised when this process already holds ``max_waiters`` waits."""

    error_type = "too_many_waiters"


@dataclass(eq=False)
class Watch:
    """One waiter's handle: ``subscribed`` once Redis confirmed the channel, ``changed`` on news."""

    subscribed: asyncio.Event
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Channel:
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    watches: set[Watch] = field(default_factory=set)


class ResultListener:
    """The process's waits on task channels, served by one pub/sub connection.

    :param client: an asyncio Redis client of its own (one connection is all it uses).
    :param max_waiters: waits held at once; more raise :class:`TooManyWaiters`.
    """

    def __init__(self, client: aioredis.Redis, max_waiters: int) -> None:
        self._redis = client
        self.max_waiters = max_waiters
        self.waiters = 0
        self._channels: dict[str, _Channel] = {}
        self._pubsub: aioredis.client.PubSub | None = None
        # Orders SUBSCRIBE and UNSUBSCRIBE as the channel table changes.
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @contextlib.asynccontextmanager
    async def watch(self, channel: str) -> AsyncIterator[Watch]:
        """Be woken on ``channel`` for the block; :class:`TooManyWaiters` past the bound."""
        if self.waiters >= self.max_waiters:
            raise TooManyWaiters(f"{self.waiters} waits already held by this API process")
        self.waiters += 1
        try:
            self._start()
            watch = await self._register(channel)
            try:
                yield watch
            finally:
                await asyncio.shield(self._unregister(channel, watch))
        finally:
            self.waiters -= 1

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop_pubsub()
        await self._redis.aclose()

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._listen())

    async def _register(self, channel: str) -> Watch:
        async with self._lock:
            entry = self._channels.get(channel)
            if entry is None:
                entry = self._channels[channel] = _Channel()
                await self._send("subscribe", channel)
            watch = Watch(subscribed=entry.subscribed)
            entry.watches.add(watch)
            return watch

    async def _unregister(self, channel: str, watch: Watch) -> None:
        async with self._lock:
            entry = self._channels.get(channel)
            if entry is None:
                return
            entry.watches.discard(watch)
            if not entry.watches:
                del self._channels[channel]
                await self._send("unsubscribe", channel)

    async def _send(self, command: str, channel: str) -> None:
        """Send (un)subscribe if connected; after a reconnect the listener sends the table."""
        if self._pubsub is None or not self._ready.is_set():
            return
        try:
            await getattr(self._pubsub, command)(channel)
        except (redis.RedisError, OSError):
            self._ready.clear()  # the listener notices the broken connection and starts over

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                await self._connect()
                failures = 0
                await self._pump()
            except (redis.RedisError, OSError) as err:
                self._ready.clear()
                await self._drop_pubsub()
                delay = RECONNECT_DELAYS_S[min(failures, len(RECONNECT_DELAYS_S) - 1)]
                failures += 1
                log.warning(
                    "wait listener lost Redis (%s); again in %.1fs", type(err).__name__, delay
                )
                await asyncio.sleep(delay)

    async def _connect(self) -> None:
        async with self._lock:
            for entry in self._channels.values():
                entry.subscribed.clear()  # set again by Redis's confirmation
            pubsub = self._redis.pubsub()
            self._pubsub = pubsub
            await pubsub.subscribe(IDLE_CHANNEL, *self._channels)
            self._ready.set()

    async def _pump(self) -> None:
        pubsub = self._pubsub
        while pubsub is not None and self._ready.is_set():
            message = await pubsub.get_message(timeout=1.0)
            if message is not None:
                self._dispatch(message)
        raise redis.ConnectionError("a subscription could not be sent")

    def _dispatch(self, message: dict[str, object]) -> None:
        raw = message.get("channel")
        channel = raw.decode() if isinstance(raw, bytes) else str(raw)
        entry = self._channels.get(channel)
        if entry is None:
            return
        if message.get("type") == "subscribe":
            # After a reconnect too: what was published while away is lost, so every waiter
            # of the channel re-reads its status now that nothing more can be missed.
            entry.subscribed.set()
        elif message.get("type") != "message":
            return
        for watch in entry.watches:
            watch.changed.set()

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await pubsub.aclose()
