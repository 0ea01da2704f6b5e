"""kombu's Redis transport, with fewer round trips per message and no idle slots.

kombu's Redis channel builds a new ``redis.Redis`` for every publish, ack and restore
(``Channel.conn_or_acquire``), and redis-py's constructor copies its whole table of response
callbacks each time: 9 % of a worker's CPU per task in the profile (BENCHMARKS.md). A client is
only a handle on the channel's connection pool and is safe to share between greenlets, so this
channel keeps one per pool and builds it again when kombu replaces the pool.

And a task's end script (:mod:`worker.delivery.task_scripts`) removes its message's unacked
entries in the same round trip as the result; :func:`settle` records that, and the ack that
Celery sends next then only does kombu's local bookkeeping instead of a round trip of its own.

While every slot of the worker's prefetch window is taken, kombu's consumer stops fetching and
waits up to 2 s (Celery's poll timeout) before it looks again: a task that ends meanwhile leaves
its slot idle for a second on average, 17 % of the throughput when calls take 5 s. This poller
looks again every ``FULL_WINDOW_POLL_S`` while the window is full.

kombu takes one message per ``BRPOP`` and records it as unacked in a second round trip. While
the queues hold a backlog, this channel takes up to ``FETCH_BATCH_MAX`` messages (no more than
the free slots of the prefetch window) and records them as unacked in one script
(``scripts/fetch.lua``): the same entries, in kombu's format, as its ``QoS.append`` writes, so
its ack, reject and ``restore_visible`` work on them unchanged. It goes back to ``BRPOP`` as
soon as a fetch finds the queues empty.

The fetch takes the messages in fair order over the whole backlog, not first in, first out: it
sorts each queue list by tenant as it goes and takes from the tenants by virtual time
(:mod:`worker.delivery.backlog`). While the window is full, the channel sorts what has arrived
(``scripts/backlog_sort.lua``, every ``backlog.SORT_EVERY_S``, at once again while there is
more), so that a tenant's task sent behind another's 50,000 is next in turn when a slot of the
window frees. A ``BRPOP`` that times out sends the channel back to the fetch once: another
worker may have sorted messages into the backlog, where ``BRPOP`` does not look.

A message that is not kombu's (not JSON, or without its delivery tag and delivery info: pushed
onto a queue by hand or by a broken producer) would stop the worker process, and take the
messages fetched with it down too. The fetch script and the ``BRPOP`` path set it aside,
untouched, in the list ``genqueue:unreadable`` (:func:`worker.keys.unreadable`) and log an
error naming the queue; the worker goes on.

:func:`install` maps the ``redis://`` and ``rediss://`` schemes to this transport, and
``sentinel://`` to :class:`SentinelTransport` (kombu's Sentinel channel with this one's
behaviour, whose connections reconnect when the primary they hold was demoted: see
:mod:`worker.redis_io.redis_sentinel`), in the process that calls it (the worker); URLs,
options and TLS handling are kombu's own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from time import monotonic, time
from typing import Any

import kombu.transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from worker import keys, lua
from worker.delivery import backlog, script_replies
from worker.redis_io import redis_outage as outage
from worker.redis_io import redis_sentinel

SCHEMES = ("redis", "rediss")
SENTINEL_SCHEME = "sentinel"
#: The most unreadable messages kept aside (the oldest go first).
UNREADABLE_MAX = 10_000

log = logging.getLogger(__name__)

# What this module relies on in kombu's Redis transport, beyond its public API (checked by
# worker.upstream at a worker's start and by tests/integration/delivery/test_kombu_internals.py):
# - the unacked hash (a delivery tag -> JSON ``[message, exchange, routing_key]``, as
#   ``QoS.append`` writes it; FETCH writes the same) and the ``unacked_index`` sorted set
#   (tag -> time taken), which ``QoS.ack``, ``restore_visible`` and ``_do_restore_message`` read;
#   the task end script (worker.delivery.task_scripts) removes both entries as ``QoS.ack`` does;
# - a queue's lists: the queue's name for priority step 0, ``<queue>\x06\x16<step>`` for the
#   others (``Channel._q_for_pri``), read in ``Channel._brpop_start``'s order;
# - ``Channel._brpop_read`` (copied below), ``conn_or_acquire``, ``MultiChannelPoller.get`` and
#   ``maybe_restore_messages`` (overridden), and the channel attributes they use;
# - ``Channel._size`` and ``_purge`` (extended: they count and empty the backlog too).
#: Each kombu method this module copies or overrides (or writes the format of), and a digest of
#: its source in the kombu of worker.upstream.TESTED (see :func:`worker.upstream.digest`).
UPSTREAM_COPIES = {
    "kombu.transport.redis:QoS.append": "4b4b426ec8acbe0d",
    "kombu.transport.redis:QoS.ack": "a6a293d96aabf1d5",
    "kombu.transport.redis:QoS._remove_from_indices": "5940a5c23a877463",
    "kombu.transport.redis:QoS.restore_visible": "6da9e6fef02e7b58",
    "kombu.transport.redis:QoS.restore_by_tag": "6224c9d1a3093fe9",
    "kombu.transport.redis:Channel._do_restore_message": "0f81f342222253c5",
    "kombu.transport.redis:Channel._brpop_start": "b8c18935c62e35af",
    "kombu.transport.redis:Channel._brpop_read": "f073dbcb18d71759",
    "kombu.transport.redis:Channel.conn_or_acquire": "01ab44dd770603a6",
    "kombu.transport.redis:Channel._q_for_pri": "b03cd0cf60dd7927",
    "kombu.transport.redis:Channel._size": "ecb21fbee63f8f84",
    "kombu.transport.redis:Channel._purge": "ae17eec16927a6d5",
    "kombu.transport.redis:MultiChannelPoller.get": "cf79564c590f7f27",
    "kombu.transport.redis:MultiChannelPoller.maybe_restore_messages": "ae6f9ac275cae02d",
    "kombu.transport.redis:Transport.__init__": "e4da22486cea9c24",
}


#: The messages whose unacked entries a task's end script removed, until their ack.
_settled: dict[str, None] = {}
#: A bound on :data:`_settled`, should acks never come (the oldest entries go first).
SETTLED_MAX = 100_000


def settle(delivery_tag: str) -> None:
    """The unacked entries of ``delivery_tag`` are gone from Redis: its ack needs no trip."""
    _settled[delivery_tag] = None
    if len(_settled) > SETTLED_MAX:
        del _settled[next(iter(_settled))]


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Tags whose unacked entries the fetch script wrote, until kombu appends them here.
        self.recorded: set[str] = set()

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.recorded:
            self.recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if _settled.pop(delivery_tag, 0) is None:
            virtual.QoS.ack(self, delivery_tag)
            return
        super().ack(delivery_tag)


#: How often the consumer looks for a freed slot while its prefetch window is full.
FULL_WINDOW_POLL_S = 0.05


class MultiChannelPoller(kombu_redis.MultiChannelPoller):  # type: ignore[misc]
    def get(self, callback: Any, timeout: float | None = None) -> Any:
        consuming = [channel for channel in self._channels if channel.active_queues]
        if sum(channel.fetch_backlog() for channel in consuming):
            return None
        if consuming and not any(channel.qos.can_consume() for channel in consuming):
            timeout = FULL_WINDOW_POLL_S if timeout is None else min(timeout, FULL_WINDOW_POLL_S)
        return super().get(callback, timeout)

    def maybe_restore_messages(self) -> Any:
        """kombu's sweep for abandoned messages, held back for a visibility timeout after this
        process found Redis away (see :func:`worker.redis_io.redis_outage.recently_down`)."""
        for channel in self._channels:
            if not channel.active_queues:
                continue
            if outage.recently_down(channel.visibility_timeout):
                return None
            try:
                return channel.qos.restore_visible(
                    num=channel.unacked_restore_limit, interval=channel.unacked_restore_throttle
                )
            except channel.connection_errors:
                outage.note_failure()  # the polling loop reconnects by itself
                return None
        return None


#: The most messages one fetch (``scripts/fetch.lua``) takes.
FETCH_BATCH_MAX = 64


def envelope(item: bytes) -> dict[str, Any] | None:
    """The kombu message in ``item``, or None if it is not one (as ``scripts/fetch.lua`` reads
    it)."""
    try:
        message = loads(bytes_to_str(item))
    except ValueError:  # not UTF-8, not JSON
        return None
    if not isinstance(message, dict):
        return None
    properties = message.get("properties")
    if not isinstance(properties, dict):
        return None
    info = properties.get("delivery_info")
    if (
        isinstance(info, dict)
        and isinstance(properties.get("delivery_tag"), str)
        and isinstance(info.get("exchange"), str)
        and isinstance(info.get("routing_key"), str)
    ):
        return message
    return None


def _log_unreadable(queue: str, size: int | None = None) -> None:
    log.error(
        "a message in queue %s is not a kombu message (not JSON, or no delivery tag and "
        "delivery info)%s: set aside in %s, untouched",
        queue,
        f", {size} bytes" if size is not None else "",
        keys.unreadable(),
    )


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    QoS = QoS
    _shared_client: Any = None
    _shared_pool: Any = None
    _fetch_script: Any = None
    #: The last BRPOP or fetch found a message: the queues may hold more.
    _backlog = True
    _sort_script: Any = None
    #: When a full window next looks for messages to sort into the backlog (monotonic).
    _sort_due = 0.0

    def _brpop_read(self, **options: Any) -> Any:
        """kombu's, but a message that is not kombu's is set aside instead of raising."""
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # The next poll reconnects.
                self.client.connection.disconnect()
                raise
            if not reply:
                self._backlog = True  # the backlog may hold messages another worker sorted
                raise Empty()
            self._backlog = True
            name, item = reply
            queue = bytes_to_str(name).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            message = envelope(item)
            if message is None:
                self._set_aside(queue, item)
            else:
                self.connection._deliver(message, queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu leaves it
            flush_reauth = getattr(self, "_flush_brpop_reauth", None)  # kombu >= 5.7
            if flush_reauth is not None:
                flush_reauth()

    def _set_aside(self, queue: str, item: bytes) -> None:
        with self.conn_or_acquire() as client:
            client.pipeline().lpush(keys.unreadable(), item).ltrim(
                keys.unreadable(), 0, UNREADABLE_MAX - 1
            ).execute()
        _log_unreadable(queue, len(item))

    def fetch_backlog(self) -> int:
        """Take up to a free window's worth of messages in one round trip; how many came.

        Only while the last look found a message, no BRPOP is waiting for its answer on
        this channel, and the window has room; every message taken is delivered before
        this returns. A full window sorts the queues' new messages into the backlog instead
        (non-zero while there is more to sort, so that the poller comes back at once).
        """
        if self._in_poll or self.global_keyprefix:
            return 0
        room = self.qos.can_consume_max_estimate()
        if room is not None and room <= 0:
            return self._sort_backlog()
        if not self._backlog:
            return 0
        want = FETCH_BATCH_MAX if room is None else min(room, FETCH_BATCH_MAX)
        fetched = self._fetch(self._lists(), want)
        self._backlog = len(fetched) >= want
        return self._deliver_fetched(fetched)

    def _lists(self) -> list[str]:
        queues = self._queue_cycle.consume(len(self.active_queues))
        return [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]

    def _fetch(self, lists: list[str], want: int) -> list[script_replies.Fetched]:
        with self.conn_or_acquire() as client:
            if self._fetch_script is None or self._fetch_script.registered_client is not client:
                self._fetch_script = lua.named(client, "worker.delivery", "fetch")
            token_queues, default_max_tokens = backlog.fairness_args()
            reply = self._fetch_script(
                keys={
                    "unacked_key": self.unacked_key,
                    "unacked_index_key": self.unacked_index_key,
                    "unreadable_key": keys.unreadable(),
                    "queue_lists": lists,
                },
                args={
                    "want": want, "now_s": time(), "unreadable_max": UNREADABLE_MAX,
                    "default_tenant": backlog.DEFAULT_TENANT, "weights": backlog.weights_spec(),
                    "token_queues": token_queues, "default_max_tokens": default_max_tokens,
                },
            )  # fmt: skip
        return script_replies.fetch(reply)

    def _sort_backlog(self) -> int:
        """Sort what the queues received into the backlog, when it is time; 1 if there is more."""
        now = monotonic()
        if now < self._sort_due or not self.active_queues:
            return 0
        with self.conn_or_acquire() as client:
            if self._sort_script is None or self._sort_script.registered_client is not client:
                self._sort_script = lua.named(client, "worker.delivery", "backlog_sort")
            sorted_ = script_replies.backlog_sort(
                self._sort_script(
                    keys={"unreadable_key": keys.unreadable(), "queue_lists": self._lists()},
                    args={
                        "most": backlog.SORT_MAX, "unreadable_max": UNREADABLE_MAX,
                        "default_tenant": backlog.DEFAULT_TENANT,
                        "weights": backlog.weights_spec(),
                        "token_queues": backlog.fairness_args()[0],
                    },
                )
            )  # fmt: skip
        for name in sorted_.set_aside:
            _log_unreadable(name.rsplit(self.sep, 1)[0])
        if sorted_.moved:
            self._backlog = True  # the window takes from the backlog when it has room
        more = sorted_.more_queued and sorted_.moved >= backlog.SORT_MAX
        self._sort_due = now if more else now + backlog.SORT_EVERY_S
        return 1 if more else 0

    def _deliver_fetched(self, fetched: list[script_replies.Fetched]) -> int:
        failure: BaseException | None = None
        for taken in fetched:
            queue = taken.queue_list.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            if taken.delivery_tag is None:
                _log_unreadable(queue)
                continue
            self.qos.recorded.add(taken.delivery_tag)
            try:
                self.connection._deliver(loads(taken.message), queue)
            except Exception as exc:  # the rest are taken too: deliver them, then raise
                failure = failure or exc
        if failure is not None:
            raise failure
        return len(fetched)

    def _size(self, queue: str) -> int:
        """kombu's count of the queue's lists, and the messages sorted into their backlogs."""
        lists = [self._q_for_pri(queue, pri) for pri in self.priority_steps]
        with self.conn_or_acquire() as client:
            sorted_count = backlog.size_of(client.execute_command(*backlog.size_command(lists)))
        return int(super()._size(queue)) + sorted_count

    def _purge(self, queue: str) -> int:
        """kombu's purge of the queue's lists, and of the messages sorted into their backlogs."""
        purged = int(super()._purge(queue))
        lists = [self._q_for_pri(queue, pri) for pri in self.priority_steps]
        with self.conn_or_acquire() as client:
            purge = lua.named(client, "worker.delivery", "backlog_purge")
            return purged + int(purge(keys={"lists": lists}, args={}))

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        if self._shared_pool is not pool:
            self._shared_client = self._create_client()
            self._shared_pool = pool
        yield self._shared_client


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = MultiChannelPoller()  # type: ignore[assignment]


class SentinelChannel(kombu_redis.SentinelChannel, Channel):  # type: ignore[misc]
    connection_class: Any = redis_sentinel.FailoverConnection
    connection_class_ssl: Any = redis_sentinel.FailoverSSLConnection


class SentinelTransport(Transport):
    default_port: Any = kombu_redis.SentinelTransport.default_port
    Channel = SentinelChannel


#: kombu's unacked hash and index (genqueue sets no ``global_keyprefix``).
UNACKED_KEY: str = Channel.unacked_key
UNACKED_INDEX_KEY: str = Channel.unacked_index_key


def install() -> None:
    """Use :class:`Transport` (:class:`SentinelTransport`) for Redis (Sentinel) broker URLs in
    this process."""
    names = {scheme: f"{__name__}:Transport" for scheme in SCHEMES}
    names[SENTINEL_SCHEME] = f"{__name__}:SentinelTransport"
    for scheme, name in names.items():
        kombu.transport.TRANSPORT_ALIASES[scheme] = name
        kombu.transport._transport_cache.pop(scheme, None)
