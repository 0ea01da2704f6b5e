"""The Celery tasks ``genqueue.generate`` and ``genqueue.webhook``, and their task classes.

``generate`` hands the message to :class:`worker.pipeline.generation.Generation` and maps the
outcome onto Celery: a result is returned, a :class:`RetryLater` becomes
``self.retry(countdown=...)`` (the wait goes back to the queue and frees the slot), a
cancellation is stored as REVOKED, a copy of a task that runs elsewhere is dropped, and a final
error is raised and stored.

A task whose request carries a ``webhook_url`` enqueues ``genqueue.webhook`` when it ends (once
Celery has stored the outcome); that task posts the status and retries on its own, so delivery
never holds a generation slot nor changes the task's outcome.

The task classes are not thin: they change parts of Celery's ``Task``. Both tasks send again
only summaries of their arguments (:class:`SummarizedTask` overrides ``signature_from_request``,
listed in ``UPSTREAM_COPIES``), and a success's event carries a summary of the result
(:class:`GenerateTask` wraps the worker's tracer): see
:mod:`worker.observability.flower_summaries`. :class:`GenerateTask` also skips Celery's write of
a success, which genqueue's end script has stored already.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from celery import Task, shared_task, states
from celery.app.trace import trace_ok_t
from celery.exceptions import Ignore, Reject
from kombu.exceptions import OperationalError

from worker import keys
from worker.contract import PRIORITY_MAX, QUEUE_NAME, TASK_NAME
from worker.errors import GenQueueError, TaskCancelled
from worker.observability.flower_summaries import (
    NO_ARGS,
    request_summary,
    result_summary,
    webhook_summary,
)
from worker.pipeline.attempt import ABANDONED, DUPLICATE, Delivery
from worker.pipeline.retry_decision import RetryLater
from worker.redis_io.redis_outage import REDIS_DOWN, OutagePolicy, RedisOutage, ride_out
from worker.resources import runtime_for
from worker.tenancy.tenants import tenant_of_message
from worker.webhooks.sender import WEBHOOK_TASK_NAME, webhook_url_of

log = logging.getLogger("genqueue.webhook")

#: The Celery method :class:`SummarizedTask` overrides, and a digest of its source in the Celery
#: of worker.upstream.TESTED.
UPSTREAM_COPIES = {"celery.app.task:Task.signature_from_request": "c665698a780cc4d3"}


def _enqueue_webhook(task: Task, task_id: str, args: Any, kwargs: Any) -> None:
    url = webhook_url_of(args, kwargs)
    if url is None:
        return
    try:
        task.app.send_task(
            WEBHOOK_TASK_NAME,
            kwargs={
                "task_id": task_id,
                "url": url,
                "first_at": time.time(),
                "tenant": tenant_of_message(args, kwargs),
            },
            queue=QUEUE_NAME,
            # Flower shows this: the URL's path and query may hold the receiver's token.
            argsrepr=NO_ARGS,
            kwargsrepr=webhook_summary(task_id, url),
        )
    except Exception:  # the task's own outcome stands whatever happens to its webhook
        log.warning("could not enqueue the webhook of task %s", task_id, exc_info=True)


class _SuccessStoredByGenqueue:
    """Celery's result backend, except that a success is already stored.

    genqueue writes a task's ``STARTED`` state and its ``SUCCESS`` result into Celery's result
    key itself, in the scripts that record the task's start and end
    (:mod:`worker.delivery.task_scripts`):
    one round trip each instead of Celery's read-then-write, and the result lands together with
    the record. Celery's own write of the success is skipped here; a chord still hears of it.
    Everything else (retries, failures, revocations) is Celery's.
    """

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def mark_as_done(
        self,
        task_id: str,
        result: Any,
        request: Any = None,
        store_result: bool = True,
        state: str = states.SUCCESS,
    ) -> None:
        self._backend.mark_as_done(task_id, result, request, store_result=False, state=state)


class SummarizedTask(Task):
    """A task whose messages sent again from a running one (``self.retry``, Celery's
    autoretry and ``retry_on_worker_lost``) carry :meth:`summarize` as their ``kwargsrepr``.

    Celery would otherwise write a ``repr`` of the full arguments into the new message, and
    Flower would show it (:mod:`worker.observability.flower_summaries`).
    """

    @staticmethod
    def summarize(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        raise NotImplementedError

    def signature_from_request(
        self,
        request: Any = None,
        args: Any = None,
        kwargs: Any = None,
        queue: str | None = None,
        **extra_options: Any,
    ) -> Any:
        request = self.request if request is None else request
        sent_args = request.args if args is None else args
        sent_kwargs = request.kwargs if kwargs is None else kwargs
        extra_options["argsrepr"] = NO_ARGS
        extra_options["kwargsrepr"] = self.summarize(sent_args or (), sent_kwargs or {})
        return super().signature_from_request(request, args, kwargs, queue, **extra_options)


Tracer = Callable[..., Any]


def _summarizing(tracer: Tracer) -> Tracer:
    """``tracer`` with a success's text representation replaced by :func:`result_summary`:
    the worker sends that string in the task-succeeded event (Flower's ``result``)."""

    def trace(uuid: str, args: Any, kwargs: Any, request: Any = None) -> Any:
        retval, info, runtime, _ = traced = tracer(uuid, args, kwargs, request)
        if info is not None or retval is None:  # a failure, or a success traced before
            return traced
        return trace_ok_t(retval, info, runtime, result_summary(retval))

    return trace


class GenerateTask(SummarizedTask):
    """``genqueue.generate``'s class: stores its own success (see
    :class:`_SuccessStoredByGenqueue`), announces a stored success or failure to the
    webhook, and shows Flower summaries of its request and result, never their text."""

    _wrapped: _SuccessStoredByGenqueue | None = None
    _tracer: Tracer | None = None
    #: Celery's own repr of a result, cut to nothing (``", ..."``): it shows in Celery's DEBUG
    #: line and in the event of a success whose prefork child died before reporting it. The
    #: task-succeeded event gets :func:`_summarizing`'s summary.
    resultrepr_maxsize = 0

    summarize = staticmethod(request_summary)

    @property
    def __trace__(self) -> Tracer | None:
        """The worker's tracer of this task (Celery sets it when the worker starts)."""
        return self._tracer

    @__trace__.setter
    def __trace__(self, tracer: Tracer | None) -> None:
        self._tracer = None if tracer is None else _summarizing(tracer)

    @property
    def backend(self) -> Any:
        backend = self.app.backend
        wrapped = self._wrapped
        if wrapped is None or wrapped._backend is not backend:
            wrapped = self._wrapped = _SuccessStoredByGenqueue(backend)
        return wrapped

    def after_return(
        self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if status in (states.SUCCESS, states.FAILURE):
            _enqueue_webhook(self, task_id, args, kwargs)


def queue_list_of(info: Mapping[str, Any] | None) -> str:
    """The Redis list a message was taken from, by its delivery info (kombu's list of its
    routing key, the queue, and priority step); '' when it names no queue."""
    queue = (info or {}).get("routing_key")
    if not isinstance(queue, str) or not queue:
        return ""
    priority = (info or {}).get("priority")
    step = priority if isinstance(priority, int) else 0
    return keys.queue_list(queue, max(0, min(PRIORITY_MAX, step)))


@shared_task(
    base=GenerateTask,
    name=TASK_NAME,
    bind=True,
    typing=False,
    acks_late=True,
    max_retries=None,
    throws=(GenQueueError,),
    # Written by genqueue in the same round trip as the task's record: see
    # worker.delivery.task_scripts.
    track_started=False,
)
def generate(self: Task, *args: Any, **kwargs: Any) -> Any:
    generation = runtime_for(self.app.genqueue_settings).generation
    try:
        properties = getattr(self.request, "properties", None) or {}
        delivery = Delivery(
            self.request.id,
            self.request.retries or 0,
            args,
            kwargs,
            self.request.hostname or "",
            properties.get("delivery_tag"),
            queue_list_of(getattr(self.request, "delivery_info", None)),
        )
        outcome = generation.run(delivery)
    except TaskCancelled as err:
        # Celery's own word for it, so plain Celery clients see REVOKED too.
        self.backend.mark_as_revoked(self.request.id, err.message, request=self.request)
        _enqueue_webhook(self, self.request.id, args, kwargs)
        raise Ignore() from err
    if isinstance(outcome, RetryLater):
        policy = OutagePolicy.from_settings(self.app.genqueue_settings)
        raise _schedule_retry(self, outcome, policy)
    if outcome in (DUPLICATE, ABANDONED):
        raise Ignore()
    return outcome


def _schedule_retry(task: Task, later: RetryLater, policy: OutagePolicy) -> BaseException:
    """Send the retry's message (Celery's ``retry``), riding out an unreachable Redis; the
    exception to raise. Redis still away past the budget: Celery's ``Reject`` (the message
    is dropped, and the lost-message sweep sends the task again from its record)."""
    # A fallback goes to the next endpoint's queue; a plain retry to the same queue.
    options = {"queue": later.queue} if later.queue else {}

    def send() -> BaseException:
        try:
            sent: BaseException = task.retry(
                countdown=later.delay_s, exc=later.error, max_retries=None, throw=False, **options
            )
        except Reject as rejected:
            if isinstance(rejected.reason, (OperationalError, *REDIS_DOWN)):
                raise REDIS_DOWN[0](str(rejected.reason)) from rejected
            raise
        return sent

    try:
        return ride_out(send, f"scheduling the retry of task {task.request.id}", policy)
    except RedisOutage as err:
        logging.getLogger("genqueue.task").error("%s", err)
        return Reject(err, requeue=False)


class WebhookTask(SummarizedTask):
    """``genqueue.webhook``'s class: its retries show the receiving host, not the URL."""

    @staticmethod
    def summarize(args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        return webhook_summary(kwargs.get("task_id"), kwargs.get("url"))


@shared_task(
    base=WebhookTask,
    name=WEBHOOK_TASK_NAME,
    bind=True,
    typing=False,
    acks_late=True,
    max_retries=None,
    ignore_result=True,
    track_started=False,
)
def webhook(self: Task, task_id: str, url: str, first_at: float, tenant: str | None = None) -> None:
    """Post the final status of ``task_id`` to ``url``, signed with its tenant's secret (else
    the server's); retried with backoff, then given up."""
    sender = runtime_for(self.app.genqueue_settings).webhooks
    assert sender is not None
    delivery = sender.deliver(task_id, url, first_at, self.request.retries or 0, tenant)
    if delivery.outcome == "retry" and delivery.retry_in_s is not None:
        raise self.retry(countdown=delivery.retry_in_s, max_retries=None)
