"""Every Redis key genqueue writes, in one place. Each has a TTL or a bound."""

from __future__ import annotations

from collections.abc import Iterable

from worker.contract import CELERY_DEFAULT_QUEUE, PRIORITY_MAX, QUEUE_NAME

PREFIX = "genqueue"


def task_record(task_id: str) -> str:
    """Hash: created_at, metadata, attempts, timestamps, error. TTL: result retention."""
    return f"{PREFIX}:task:{task_id}"


def tokens(task_id: str) -> str:
    """Stream of a streaming task's pieces of text, ``restart`` and ``end`` marks. TTL: result
    retention; bounded by ``worker.delivery.token_stream.TOKEN_STREAM_MAXLEN`` entries."""
    return f"{PREFIX}:tokens:{task_id}"


def idempotency(key_digest: str) -> str:
    """String ``task_id body_digest``. TTL: idempotency retention."""
    return f"{PREFIX}:idem:{key_digest}"


def lease(endpoint_id: str) -> str:
    """Sorted set of in-flight call tokens scored by expiry. Bounded by the concurrency cap."""
    return f"{PREFIX}:lease:{endpoint_id}"


def admission(endpoint_id: str) -> str:
    """Sorted set: the endpoint's admission queue, tasks held by workers and waiting for a
    slot, in the order they get one (``worker/limits/scripts/lib/admission_queue.lua``). TTL: four
    lease TTLs after its last change; each waiter lapses by itself unless its worker renews it."""
    return f"{PREFIX}:admit:{endpoint_id}"


def admission_by_age(endpoint_id: str) -> str:
    """Sorted set (by member): the admission queue's waiters of each band and tenant, oldest
    first. TTL: as :func:`admission`'s."""
    return f"{PREFIX}:admit-byage:{endpoint_id}"


def admission_info(endpoint_id: str) -> str:
    """Hash: each waiter of the admission queue (its place, grant list, expiry), and each band's
    and tenant's virtual clock. TTL: as :func:`admission`'s."""
    return f"{PREFIX}:admit-info:{endpoint_id}"


def admission_age(endpoint_id: str) -> str:
    """Sorted set: each waiter of the admission queue scored by when it joined. TTL: as
    :func:`admission`'s."""
    return f"{PREFIX}:admit-age:{endpoint_id}"


def auto_limit(endpoint_id: str) -> str:
    """Hash: the controller of an endpoint whose ``max_concurrency`` is ``"auto"``: the limit
    in force, the no-load latency estimate and the current sample window
    (``worker/limits/scripts/lib/auto_limit.lua``). TTL: a day after its last sample."""
    return f"{PREFIX}:auto-limit:{endpoint_id}"


def lease_swept(endpoint_id: str) -> str:
    """Hash: worker process id -> when it last swept the endpoint's leases (ms), which tells a
    stalled process from a live one (``worker/limits/scripts/lease_sweep.lua``). TTL: four
    lease TTLs after the last sweep; a dead process's field goes when it is found dead."""
    return f"{PREFIX}:lease-swept:{endpoint_id}"


def grants(owner: str) -> str:
    """List: the slot tokens the admission queue granted to one worker process's waiters, popped
    by that process. TTL: a lease's."""
    return f"{PREFIX}:grants:{owner}"


def pod(endpoint_id: str) -> str:
    """Hash: the endpoint's pod as genqueue knows it: ``state`` (starting, ready, stopping,
    stopped, failed), who started it (``by``), ``started_at``, ``ready_at``, ``stopped_at``,
    ``last_call_at`` (ms), ``reason``; its running and idle seconds. TTL: thirty days after
    its last change."""
    return f"{PREFIX}:pod:{endpoint_id}"


def pod_lock(endpoint_id: str) -> str:
    """String: the lock of the one process that starts or stops the endpoint's pod. TTL: a
    lock's, renewed while it acts."""
    return f"{PREFIX}:pod-lock:{endpoint_id}"


def pod_waiters(endpoint_id: str) -> str:
    """Sorted set: tasks waiting for the endpoint's pod to come up, scored by when each joined
    (ms); one older than the longest wait counts no more. TTL: the longest wait's."""
    return f"{PREFIX}:pod-wait:{endpoint_id}"


def last_calls() -> str:
    """Sorted set: each endpoint scored by when its last call ended (ms). Bounded by the
    endpoints."""
    return f"{PREFIX}:last-call"


#: Celery's Redis result backend's key prefix (its default naming).
CELERY_RESULT_PREFIX = "celery-task-meta-"


def celery_result(task_id: str) -> str:
    """Celery's own result key, and the channel its backend publishes each state on."""
    return f"{CELERY_RESULT_PREFIX}{task_id}"


def running(task_id: str) -> str:
    """String: the token of the worker running the task now. TTL: renewed by its heartbeat."""
    return f"{PREFIX}:running:{task_id}"


def held_messages(process_id: str) -> str:
    """Set: the delivery tags of the messages one worker process held unacknowledged at its
    last heartbeat (``worker/delivery/dead_holders.py``). TTL: the visibility timeout."""
    return f"{PREFIX}:held:{process_id}"


def message_holders() -> str:
    """Sorted set: worker process id -> when it last wrote :func:`held_messages` (ms). Entries
    older than the visibility timeout go at the next sweep."""
    return f"{PREFIX}:message-holders"


def replica_id(endpoint_id: str, index: int) -> str:
    """The id of a pool's replica (its place in the endpoint's ``urls``, from 0) in the keys of
    its own breaker (:func:`breaker`, :func:`breaker_probe`, :func:`dropped`) and in metrics:
    ``<endpoint>@<index>``, never its URL."""
    return f"{endpoint_id}@{index}"


def pool_assign(endpoint_id: str) -> str:
    """Hash: each of a pool's slot tokens -> the replica its call went to (an index); an entry
    counts while its token holds a lease (``worker/limits/scripts/pool_pick.lua`` removes the
    others). TTL: four lease TTLs after the last pick."""
    return f"{PREFIX}:pool-assign:{endpoint_id}"


def pool_affinity(endpoint_id: str) -> str:
    """Hash: a prefix or session digest -> the pool's replica that served it last. TTL: the
    affinity TTL after the last pick; bounded by ``worker.limits.pool.AFFINITY_MAX`` entries."""
    return f"{PREFIX}:pool-affinity:{endpoint_id}"


def breaker(endpoint_id: str) -> str:
    """Hash: consecutive failures, ``open_until`` and ``cooldown`` (ms), and ``served``, the
    successes counted. TTL: an hour after its last change."""
    return f"{PREFIX}:breaker:{endpoint_id}"


def breaker_probe(endpoint_id: str) -> str:
    """String: held by the one call probing a half-open breaker. TTL: a lease's."""
    return f"{PREFIX}:breaker-probe:{endpoint_id}"


def dropped(endpoint_id: str) -> str:
    """String: the calls in flight when the endpoint dropped its connections, shared by every
    call dropped at that moment (see :mod:`worker.pipeline.request_faults`). TTL: half a second."""
    return f"{PREFIX}:dropped:{endpoint_id}"


def rate(endpoint_id: str) -> str:
    """Hash: this minute's window and the requests and tokens spent in it. TTL: 2 minutes."""
    return f"{PREFIX}:rate-limit:{endpoint_id}"


def api_rate(caller: str, window: int) -> str:
    """String counter of one API caller's submissions in one minute window. TTL: two windows."""
    return f"{PREFIX}:rate:{caller}:{window}"


def usage(tenant: str, day: str) -> str:
    """Hash of one tenant's usage on one UTC day (``YYYY-MM-DD``): ``<endpoint>:<outcome>``,
    ``<endpoint>:prompt_tokens``, ``<endpoint>:completion_tokens``, ``<endpoint>:gpu_ms``, and
    ``total_tokens``. TTL: the usage retention."""
    return f"{PREFIX}:usage:{tenant}:{day}"


def usage_tenants(day: str) -> str:
    """Set of the tenants with usage on one UTC day. TTL: the usage retention."""
    return f"{PREFIX}:usage-tenants:{day}"


def usage_totals() -> str:
    """Hash of ``<tenant>|<endpoint>|<kind>`` totals (the metrics' counters). TTL: the usage
    retention after the last task's end."""
    return f"{PREFIX}:usage-totals"


def reserved_tokens(tenant: str) -> str:
    """Hash of a tenant's tokens reserved by submissions and not yet settled, by UTC day.
    TTL: two days."""
    return f"{PREFIX}:reserved:{tenant}"


def bench_held(queue: bytes) -> bytes:
    """A queue's list set aside by ``genqueue bench`` while its worker starts; renamed back."""
    return b"genqueue-bench:held:" + queue


def inbox() -> str:
    """Sorted set of accepted task ids scored by submission (or last resend) time. Trimmed to
    the result retention by the reaper, which removes finished tasks as it meets them."""
    return f"{PREFIX}:inbox"


def reaper_lock() -> str:
    """String: held by the one worker sweeping for lost messages. TTL: the sweep interval."""
    return f"{PREFIX}:reaper-lock"


def dead_letters() -> str:
    """List of dead-lettered tasks, newest first. Bounded by ``dead_letter_max``."""
    return f"{PREFIX}:dead"


def unreadable() -> str:
    """List of raw broker messages that are not kombu messages (set aside by a worker),
    newest first. Bounded by ``worker.delivery.broker.UNREADABLE_MAX``."""
    return f"{PREFIX}:unreadable"


def batch(batch_id: str) -> str:
    """Hash: created_at, total, cancelled_at. TTL: result retention."""
    return f"{PREFIX}:batch:{batch_id}"


def batch_tasks(batch_id: str) -> str:
    """List of ``<task_id> <custom_id>`` in input order. TTL: result retention."""
    return f"{PREFIX}:batch:{batch_id}:tasks"


#: Stream of final states (``XADD MAXLEN ~ GENQUEUE_EVENTS_MAXLEN``): bounded.
EVENTS_STREAM = f"{PREFIX}:events"

#: The exchange and routing key of Celery's task-sent event (a fanout exchange on Redis).
EVENT_EXCHANGE = "celeryev"
EVENT_ROUTING_KEY = "task.sent"
#: The routing key of several task events in one message (a list), as Celery sends a group.
EVENT_MULTI_ROUTING_KEY = "task.multi"


def event_topic(db: int, routing_key: str = EVENT_ROUTING_KEY) -> str:
    """The pub/sub channel of a task event (kombu's fanout prefix names the database)."""
    return f"/{db}.{EVENT_EXCHANGE}/{routing_key}"


#: Pub/sub channel the API's result listener always subscribes to (nothing is published on it).
WAITERS_CHANNEL = f"{PREFIX}:waiters"

#: Pub/sub channel on which the API announces cancellations of running tasks.
CANCEL_CHANNEL = f"{PREFIX}:cancel"

# --------------------------------------------------------------------------- Celery's queues

#: The queues of tasks that name no endpoint: genqueue's, and Celery's default (plain
#: ``send_task`` callers).
GENERAL_QUEUES = (QUEUE_NAME, CELERY_DEFAULT_QUEUE)


def queue_for(endpoint: str | None) -> str:
    """The Celery queue of tasks for ``endpoint``; genqueue's own for tasks that name none.

    A named endpoint has a queue of its own, so workers can be dedicated to it.
    """
    return f"{QUEUE_NAME}.{endpoint}" if endpoint else QUEUE_NAME


def all_queues(endpoints: Iterable[str]) -> list[str]:
    """The general queues and each endpoint's, once each, in that order."""
    return list(dict.fromkeys([*GENERAL_QUEUES, *(queue_for(name) for name in endpoints)]))


#: kombu's separator between a queue's name and its priority step in the Redis list's name.
PRIORITY_SEP = "\x06\x16"


def queue_list(queue: str, step: int) -> str:
    """The Redis list of ``queue``'s priority step (kombu: step 0 is the queue's own name)."""
    return f"{queue}{PRIORITY_SEP}{step}" if step else queue


def queue_lists(queues: Iterable[str]) -> list[str]:
    """Every Redis list of ``queues``: the queue itself (step 0) and each priority step."""
    return [queue_list(queue, step) for queue in queues for step in range(PRIORITY_MAX + 1)]


def backlog(queue_list_key: str, tenant: str) -> str:
    """List: one tenant's messages of a queue list, sorted out of it by a fetch so that tenants
    take turns over the whole backlog (``worker/delivery/scripts/lib/backlog_fair_order.lua``, which
    writes these names too). No TTL, as kombu's lists: bounded by what is queued."""
    return f"{PREFIX}:backlog:{tenant}:{queue_list_key}"


def backlog_tenants(queue_list_key: str) -> str:
    """Sorted set: the tenants with messages in a queue list's backlog, scored by their virtual
    finish times. Gone when the backlog is empty."""
    return f"{PREFIX}:backlog-tenants:{queue_list_key}"


def backlog_clock(queue_list_key: str) -> str:
    """String: the virtual time of a queue list's backlog. Gone when the backlog is empty."""
    return f"{PREFIX}:backlog-clock:{queue_list_key}"


def backlog_seq(queue_list_key: str) -> str:
    """Hash: ``s:<tenant>`` the sequence number of the tenant's last message sorted into a queue
    list's backlog, ``t:<tenant>`` of its last taken; a task's record keeps its message's
    number (``backlog_seq``) for its place in the queue (``queue_position.lua``). A tenant's
    fields are gone when its backlog list is."""
    return f"{PREFIX}:backlog-seq:{queue_list_key}"


def backlog_size() -> str:
    """Hash: queue list -> how many messages its backlog holds. A field per list that holds
    some."""
    return f"{PREFIX}:backlog-size"


def queue_bindings(queue: str) -> list[tuple[str, str]]:
    """The sets kombu's queue declaration adds to for ``queue`` and the member it adds: its
    exchange's binding table and the permanent copy (Celery names the exchange and the routing
    key after the queue)."""
    member = f"{queue}{PRIORITY_SEP}{PRIORITY_SEP}{queue}"
    return [(f"_kombu.binding.{queue}", member), (f"_kombu.binding_permanent.{queue}", member)]


#: kombu's hash of unacknowledged messages and its index by time (kombu's names: genqueue sets
#: no ``global_keyprefix``).
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"
