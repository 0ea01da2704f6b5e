"""One attempt at a generation task: validate, render, call the endpoint under its guard.

Knows nothing of Celery: :meth:`Generation.run` returns a result dict, a :class:`RetryLater`
or :data:`DUPLICATE`, and raises a :class:`~worker.errors.GenQueueError` for a final failure.
The Celery task in :mod:`worker.tasks` maps those onto ``return``, ``self.retry``, ``Ignore``
and ``raise``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import redis

from worker import keys
from worker.contract import GenerationRequest, GenerationResult
from worker.delivery import records
from worker.delivery.dead_letters import DeadLetters
from worker.delivery.heartbeat import RunningTasks
from worker.delivery.task_scripts import (
    USAGE_TTL_S,
    BrokerAcks,
    Ending,
    Finished,
    Lifecycle,
    Progress,
)
from worker.delivery.token_stream import TokenStream
from worker.endpoints.clients import EndpointTarget
from worker.endpoints.config import Endpoints, EndpointSpec
from worker.endpoints.params import describe_refusal, for_server, refused
from worker.endpoints.serverless import FAILED_STATES, PENDING_STATES, Job, job_input, result_from
from worker.endpoints.serverless import failure as job_failure
from worker.errors import (
    AlreadyRunning,
    CircuitOpenError,
    DeadlineExpired,
    GenQueueError,
    InvalidEndpointResponse,
    InvalidRequest,
    JobPending,
    PermanentEndpointError,
    PoisonTask,
    RateLimitedError,
    RetriesExhausted,
    RetryableEndpointError,
    TaskCancelled,
)
from worker.limits.guard import (
    Claim,
    GrantedSlot,
    Outcome,
    Slot,
    SlotOffer,
    SlotRelease,
)
from worker.observability.metrics import CURRENT_ENDPOINT, TaskObserver, seconds_since
from worker.pipeline.backoff import RetryPolicy
from worker.pipeline.payload import parse_payload
from worker.pipeline.render import PromptRenderer, as_messages
from worker.pipeline.request_faults import RequestFaults
from worker.pipeline.retry_decision import (
    RetryLater,
    RetryLimits,
    after,
    fall_back_to,
    later,
    next_endpoint,
    poll_delay_s,
    retry_or_give_up,
)
from worker.redis_outage import OutagePolicy, RedisOutage, ride_out
from worker.tenants import tenant_of_message

log = logging.getLogger("genqueue.task")

#: Returned when another live worker runs the same task: this copy is dropped.
DUPLICATE = "duplicate"
#: Returned when Redis stayed away past the outage budget: nothing was written, and the
#: message is left to come back (see :meth:`Generation._abandon`).
ABANDONED = "abandoned"
#: Finished results this process could not store, kept until their task's message comes back.
UNSTORED_MAX = 10_000


@dataclass(frozen=True)
class Delivery:
    """One message of a task, as Celery handed it over."""

    task_id: str
    #: Celery's retry count: tells apart the messages of one task, so that the deliveries of
    #: each message are counted.
    round: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    #: The worker's name, for the ``STARTED`` state.
    hostname: str = ""
    #: The broker's tag of the message, acknowledged by the task's end script.
    message_tag: str | None = None


@dataclass(frozen=True)
class _Call:
    """What goes to the endpoint: a rendered prompt, or messages as they are (chat)."""

    prompt: str | None
    messages: list[dict[str, str]] | None
    params: dict[str, Any]
    #: Stream the answer into the task's token stream.
    stream: bool = False


#: A serverless job is polled in the task that submitted it, holding its endpoint slot, every
#: JOB_POLL_FIRST_S doubling to JOB_POLL_MAX_S, for up to JOB_HOLD_S; then from the queue.
JOB_POLL_FIRST_S = 0.25
JOB_POLL_MAX_S = 2.0
JOB_HOLD_S = 300.0


def _message_dicts(request: GenerationRequest) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in as_messages(request)]


@dataclass(frozen=True)
class GenerationPolicy:
    retry: RetryPolicy
    deadline_s: float
    record_ttl_s: int
    max_deliveries: int
    events_maxlen: int = 100_000
    outage: OutagePolicy = field(default_factory=OutagePolicy)
    #: ``max_tokens`` of a request that gives none.
    default_max_tokens: int = 512
    #: How long a tenant's usage of a day is kept.
    usage_ttl_s: int = USAGE_TTL_S

    @property
    def retry_limits(self) -> RetryLimits:
        return RetryLimits(self.retry, self.deadline_s)


class Generation:
    """Runs attempts of ``genqueue.generate``.

    :param redis_client: for task records (never the endpoint's secrets).
    :param renderer: prompt templates.
    :param endpoints: the configured endpoints (names, default, fallback chains).
    :param targets: each endpoint's client and guard (its shared cap and circuit breaker).
    :param running: this process's running claims and cancellable calls.
    :param dead_letters: where poison tasks go.
    :param policy: attempts, backoff, deadline, retention, deliveries.
    :param observer: counts and logs each state change (metrics and task log lines).
    :param broker_acks: how a task's end acknowledges its message (``None``: Celery does).
    """

    def __init__(
        self,
        *,
        redis_client: redis.Redis,
        renderer: PromptRenderer,
        endpoints: Endpoints,
        targets: dict[str, EndpointTarget],
        running: RunningTasks,
        dead_letters: DeadLetters,
        policy: GenerationPolicy,
        observer: TaskObserver | None = None,
        broker_acks: BrokerAcks | None = None,
    ) -> None:
        self._redis = redis_client
        self._renderer = renderer
        self._endpoints = endpoints
        self._targets = targets
        self._running = running
        self._dead_letters = dead_letters
        self._policy = policy
        self._lifecycle = Lifecycle(
            redis_client, policy.record_ttl_s, policy.events_maxlen, broker_acks, policy.usage_ttl_s
        )
        self._observe = observer or TaskObserver()
        self._faults = RequestFaults(redis_client)
        #: Slots of successful calls whose release rides on the task's end (:meth:`_finish`).
        self._slot_releases: dict[str, SlotRelease] = {}
        #: Slots granted by the task's start script, until the call takes them over.
        self._granted: dict[str, GrantedSlot] = {}
        #: Results whose end script did not get through, by task id (see :meth:`_abandon`).
        self._unstored: OrderedDict[str, GenerationResult] = OrderedDict()
        self._broker_acks = broker_acks
        self._tokens = TokenStream(redis_client, policy.record_ttl_s)
        #: Tasks whose call streamed in this attempt: their stream is marked at the end.
        self._streamed: set[str] = set()

    def run(self, delivery: Delivery) -> Any:
        """A result dict, :class:`RetryLater` or :data:`DUPLICATE`; raises when final.

        A result is already stored in Celery's result key when this returns.
        """
        CURRENT_ENDPOINT.set(None)
        final = False
        try:
            with self._observe.running():
                outcome = self._run(delivery)
            final = isinstance(outcome, dict)
            return outcome
        except RedisOutage as err:
            return self._abandon(delivery, err)
        except GenQueueError:
            final = True
            raise
        finally:
            if delivery.task_id in self._streamed:
                self._streamed.discard(delivery.task_id)
                if final:  # stored already: followers of the stream stop waiting now
                    self._tokens.ended(delivery.task_id)
            # Once the end is recorded the claim and the slot are gone; otherwise they go now.
            self._running.release(delivery.task_id)
            slot_release = self._slot_releases.pop(delivery.task_id, None)
            if slot_release is not None:
                slot_release.guard.release(slot_release)
            granted = self._granted.pop(delivery.task_id, None)
            if granted is not None:  # the task ended before its call (an invalid prompt)
                granted.offer.guard.release_granted(granted)

    def _run(self, delivery: Delivery) -> Any:
        task_id, args, kwargs = delivery.task_id, delivery.args, delivery.kwargs
        try:
            outcome = self._attempt(delivery)
        except GenQueueError as err:
            if isinstance(err, PoisonTask):
                self._dead_letters.add(task_id, kwargs.get("request", args), err.message)
            end = self._finish(delivery, err)
            self._observe.failed(
                task_id, end.attempts, err.error_type, err.message, seconds_since(end.created_at)
            )
            raise
        if isinstance(outcome, RetryLater):
            error = outcome.error
            self._observe.retrying(
                task_id, outcome.attempt, error.error_type, error.message, outcome.delay_s,
                outcome.latency_ms,
            )  # fmt: skip
            return outcome
        if not isinstance(outcome, GenerationResult):
            log.info("task %s is running on another worker; dropping this copy", task_id)
            return DUPLICATE
        result = outcome.model_dump(mode="json")
        end = self._finish(delivery, None, result)
        if end.cancel_requested:
            cancelled = TaskCancelled("the task was cancelled while it ran; result discarded")
            end = self._finish(delivery, cancelled)
            self._observe.failed(
                task_id, end.attempts, cancelled.error_type, cancelled.message,
                seconds_since(end.created_at),
            )  # fmt: skip
            raise cancelled
        self._observe.succeeded(task_id, end.attempts, outcome, seconds_since(end.created_at))
        return result

    def _abandon(self, delivery: Delivery, err: RedisOutage) -> str:
        """Give the task up for now, Redis being away past the outage budget.

        Nothing was written (each script is all or nothing). The message's ack stays local, so
        its unacknowledged entry stays in Redis and the message comes back after the visibility
        timeout; a result this process finished is kept (:attr:`_unstored`) and stored when it
        does, without a second endpoint call (by another process, the endpoint is called again).
        """
        kept = delivery.task_id in self._unstored
        log.error(
            "task %s: %s; %s",
            delivery.task_id,
            err,
            "its result is kept in this worker process and stored when its message comes back"
            if kept
            else "its message comes back when Redis does",
        )
        if delivery.message_tag and self._broker_acks is not None:
            self._broker_acks.settled(delivery.message_tag)
        return ABANDONED

    def _keep(self, task_id: str, result: GenerationResult) -> None:
        self._unstored[task_id] = result
        self._unstored.move_to_end(task_id)
        while len(self._unstored) > UNSTORED_MAX:
            self._unstored.popitem(last=False)

    def _begin(self, delivery: Delivery, offer: SlotOffer | None) -> Progress:
        """The task's start script, riding out an unreachable Redis."""
        try:
            return ride_out(
                lambda: self._lifecycle.begin(
                    delivery.task_id,
                    delivery.round,
                    delivery.hostname,
                    offer,
                    self._policy.max_deliveries,
                ),
                "its start",
                self._policy.outage,
            )
        except RedisOutage:
            if offer is not None:
                offer.guard.withdraw(offer)
            raise

    def _attempt(self, delivery: Delivery) -> GenerationResult | RetryLater | str:
        task_id = delivery.task_id
        request = parse_payload(delivery.args, delivery.kwargs)
        offer = self._offer(task_id, request)
        progress = self._begin(delivery, offer)
        if progress.granted is not None:
            self._granted[task_id] = progress.granted
            self._running.hold(task_id, progress.granted.offer.claim.token)
        elif offer is not None:
            offer.guard.withdraw(offer)
        if progress.stored_result is not None:
            log.info("task %s already has a result; not calling the endpoint again", task_id)
            return progress.stored_result
        kept = self._unstored.get(task_id)
        if kept is not None and not progress.cancel_requested:
            log.info("task %s: storing the result kept while Redis was away", task_id)
            return kept  # no call: run() gives a granted slot back at once
        name = progress.endpoint or request.endpoint or self._endpoints.default
        CURRENT_ENDPOINT.set(name)
        target = self._targets.get(name)
        if target is None:
            known = ", ".join(self._endpoints.names)
            raise InvalidRequest(f"unknown endpoint {name!r} (configured: {known})")
        if progress.cancel_requested:
            self._cancel_job(target, progress)
            raise TaskCancelled("the task was cancelled before it ran")
        if progress.deliveries > self._policy.max_deliveries:
            raise PoisonTask(
                f"delivered {progress.deliveries} times and its worker never finished it "
                "(killed or crashed each time); moved to the dead-letter list"
            )
        self._time_left(request)
        try:
            outcome = self._on_endpoint(task_id, request, target, progress)
        except RetriesExhausted as err:
            moved = self._fall_back(task_id, request, name, progress, err)
            if moved is None:
                raise
            return moved
        if isinstance(outcome, GenerationResult):
            tried = [*progress.tried, name]
            # The configured model name when there is one (servers answer a file path, or
            # echo what was sent); the server's own answer beside it.
            return outcome.model_copy(
                update={
                    "endpoint": name,
                    "endpoints_tried": tried,
                    "model": target.spec.model or outcome.model,
                    "server_model": outcome.model,
                }
            )
        return outcome

    def _offer(self, task_id: str, request: GenerationRequest) -> SlotOffer | None:
        """The slot the task's start script may take in passing: its expected endpoint's,
        when this process has a permit free and the deadline has not passed."""
        name = request.endpoint or self._endpoints.default
        target = self._targets.get(name)
        if target is None:
            return None
        if request.deadline is not None and request.deadline <= datetime.now(UTC):
            return None
        return target.guard.offer(self._claim(task_id, name, request))

    def _claim(self, task_id: str, endpoint: str, request: GenerationRequest) -> Claim:
        """A new running claim on ``task_id``, to take with a slot on ``endpoint``; the
        request's priority and tenant place it in the endpoint's admission queue."""
        return Claim(
            task_id,
            uuid.uuid4().hex,
            self._running.claim_ttl_ms,
            endpoint,
            priority=request.priority,
            tenant=getattr(request, "tenant", None),
        )

    def _on_endpoint(
        self,
        task_id: str,
        request: GenerationRequest,
        target: EndpointTarget,
        progress: Progress,
    ) -> GenerationResult | RetryLater | str:
        spec = target.spec
        chat = request.chat or spec.chat
        template = request.template if "template" in request.model_fields_set else spec.template
        call = _Call(
            prompt=None if chat else self._renderer.render(request, template),
            messages=[dict(m) for m in _message_dicts(request)] if chat else None,
            params=self._params(request, spec),
            stream=request.stream,
        )
        if spec.kind == "runpod-serverless" and progress.job_id is not None:
            return self._poll_job(task_id, request, target, progress)
        granted = self._granted.pop(task_id, None)
        if granted is not None and granted.offer.guard is not target.guard:
            granted.offer.guard.release_granted(granted)  # not this endpoint's after all
            granted = None
        claim = (
            granted.offer.claim if granted is not None else self._claim(task_id, spec.name, request)
        )
        try:
            # Granted together with the slot: the task's running claim and its attempt count.
            with target.guard.slot(claim, granted) as slot:
                self._running.hold(task_id, claim.token)
                return self._call(task_id, request, target, call, progress, slot)
        except AlreadyRunning:
            return DUPLICATE
        except RateLimitedError as limited:
            return later(request, limited, progress.attempts, after(limited))
        except CircuitOpenError as error:
            moved = self._fall_back(task_id, request, spec.name, progress, error)
            if moved is not None:
                return moved
            return later(request, error, progress.attempts, after(error))

    def _params(self, request: GenerationRequest, spec: EndpointSpec) -> dict[str, Any]:
        """The request's ``params`` as the endpoint's kind takes them (the API refuses the
        others at submission; a task sent straight to Celery fails here)."""
        params = request.params.model_dump(mode="json", exclude_none=True)
        unknown = refused(spec.kind, params)
        if unknown and spec.strict_params:
            raise InvalidRequest(describe_refusal(spec.name, spec.kind, unknown))
        return for_server(spec.kind, params, self._policy.default_max_tokens)

    def _call(
        self,
        task_id: str,
        request: GenerationRequest,
        target: EndpointTarget,
        call: _Call,
        progress: Progress,
        slot: Slot,
    ) -> GenerationResult | RetryLater | str:
        read_timeout_s = self._time_left(request)  # the wait for a slot may have spent it
        attempt, on_endpoint = slot.attempt, slot.attempt_on_endpoint
        self._observe.started(task_id, attempt, call.prompt or "")
        started = time.perf_counter()
        try:
            with self._running.cancellable(task_id):
                result = self._send(task_id, target, call, read_timeout_s)
                if isinstance(result, Job):
                    result = self._await_job(request, target, result)
        except RetryableEndpointError as err:
            latency_s = self._called(started)
            verdict = self._faults.judge(task_id, target.spec.name, target.spec.base_url, err)
            # A failure that follows this request says nothing of the endpoint's health.
            slot.outcome = Outcome.NEUTRAL if verdict.request_caused else Outcome.FAILURE
            if verdict.fault is not None:
                raise verdict.fault from err
            later = retry_or_give_up(
                request, err, on_endpoint, progress.first_attempt_at, self._policy.retry_limits
            )
            return replace(later, attempt=attempt, latency_ms=int(latency_s * 1000))
        except PermanentEndpointError:
            slot.outcome = Outcome.OK  # the endpoint is up; it refused this request
            self._called(started)
            raise
        self._called(started)
        slot.outcome = Outcome.OK
        if isinstance(result, GenerationResult):
            slot.tokens = result.usage.total_tokens
            self._slot_releases[task_id] = target.guard.hand_off(slot)
        if isinstance(result, Job):
            return self._job_outcome(task_id, request, target, result, polls=0, attempt=attempt)
        return result

    def _send(
        self, task_id: str, target: EndpointTarget, call: _Call, read_timeout_s: float | None
    ) -> GenerationResult | Job:
        if target.serverless is not None:
            body = job_input(call.prompt, call.messages, call.params)
            if target.spec.mode == "runsync":
                job = target.serverless.run_sync(body)
            else:
                job = target.serverless.submit(body)
            self._redis.hset(
                keys.task_record(task_id),
                mapping={records.F_JOB: job.job_id, records.F_JOB_AT: repr(time.time())},
            )
            return job
        assert target.client is not None
        on_piece = None
        if call.stream:
            self._streamed.add(task_id)
            on_piece = self._tokens.call(task_id)
        if call.messages is not None:
            return target.client.chat(call.messages, call.params, read_timeout_s, on_piece)
        return target.client.complete(call.prompt or "", call.params, read_timeout_s, on_piece)

    def _await_job(self, request: GenerationRequest, target: EndpointTarget, job: Job) -> Job:
        """Poll a job just submitted, here, holding its endpoint slot: ``max_concurrency`` caps
        the jobs outstanding at RunPod, not only the ``/run`` calls. A job still pending after
        :data:`JOB_HOLD_S` is polled from the queue instead (its slot given back)."""
        assert target.serverless is not None
        until = time.monotonic() + JOB_HOLD_S
        delay_s = JOB_POLL_FIRST_S
        try:
            while job.state in PENDING_STATES and time.monotonic() + delay_s < until:
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, JOB_POLL_MAX_S)
                try:
                    job = target.serverless.status(job.job_id, request.params.max_tokens)
                except RetryableEndpointError as err:
                    log.info("serverless job %s: %s; polling again", job.job_id, err)
        except TaskCancelled:
            self._cancel_job_id(target, job.job_id)
            raise
        return job

    def _poll_job(
        self, task_id: str, request: GenerationRequest, target: EndpointTarget, progress: Progress
    ) -> GenerationResult | RetryLater:
        assert target.serverless is not None and progress.job_id is not None
        try:
            job = target.serverless.status(progress.job_id, request.params.max_tokens)
        except RetryableEndpointError as err:
            return later(request, err, progress.attempts, poll_delay_s(progress.polls))
        return self._job_outcome(
            task_id, request, target, job, polls=progress.polls, attempt=progress.attempts
        )

    def _job_outcome(
        self,
        task_id: str,
        request: GenerationRequest,
        target: EndpointTarget,
        job: Job,
        polls: int,
        attempt: int,
    ) -> GenerationResult | RetryLater:
        """A serverless job's state as a result, a poll later, or a final error."""
        if job.state == "COMPLETED":
            submitted = self._redis.hget(keys.task_record(task_id), records.F_JOB_AT)
            latency_s = time.time() - float(submitted) if submitted else 0.0
            return result_from(job, int(latency_s * 1000))
        if job.state in PENDING_STATES:
            self._redis.hincrby(keys.task_record(task_id), records.F_POLLS, 1)
            pending = JobPending(f"serverless job {job.job_id} is {job.state}")
            return later(request, pending, attempt, poll_delay_s(polls))
        if job.state == "CANCELLED":
            raise TaskCancelled(f"serverless job {job.job_id} was cancelled")
        if job.state in FAILED_STATES:
            raise job_failure(job)
        raise InvalidEndpointResponse(
            f"serverless job {job.job_id} is in unknown state {job.state}"
        )

    def _cancel_job(self, target: EndpointTarget, progress: Progress) -> None:
        if target.serverless is None or progress.job_id is None:
            return
        self._cancel_job_id(target, progress.job_id)

    def _cancel_job_id(self, target: EndpointTarget, job_id: str) -> None:
        assert target.serverless is not None
        try:
            target.serverless.cancel(job_id)
        except GenQueueError as err:
            log.warning("could not cancel serverless job %s: %s", job_id, err)

    def _fall_back(
        self,
        task_id: str,
        request: GenerationRequest,
        name: str,
        progress: Progress,
        err: GenQueueError,
    ) -> RetryLater | None:
        """Move the task to the next endpoint of its chain, if one is left."""
        tried = [*progress.tried, name]
        following = next_endpoint(self._endpoints.chain(request.endpoint), tried)
        if following is None:
            return None
        self._redis.hset(
            keys.task_record(task_id),
            mapping={records.F_ENDPOINT: following, records.F_TRIED: ",".join(tried)},
        )
        log.info("task %s moves from endpoint %s to %s: %s", task_id, name, following, err)
        return fall_back_to(following, name, err, progress.attempts)

    def _called(self, started: float) -> float:
        latency_s = time.perf_counter() - started
        self._observe.called(latency_s)
        return latency_s

    def _time_left(self, request: GenerationRequest) -> float | None:
        """Seconds until the request's deadline (``None`` without one); expired if none."""
        if request.deadline is None:
            return None
        left_s = (request.deadline - datetime.now(UTC)).total_seconds()
        if left_s <= 0:
            raise DeadlineExpired(f"the deadline {request.deadline.isoformat()} passed")
        return left_s

    def _finish(
        self, delivery: Delivery, error: GenQueueError | None, result: dict[str, Any] | None = None
    ) -> Finished:
        """Record the end (and store ``result``), release the running claim and the endpoint
        slot, acknowledge the message, and add the end to the completion stream, in one round
        trip.

        Says whether a cancellation was asked for meanwhile (a success is then neither stored
        nor announced: the caller finishes the task again as cancelled).
        """
        task_id = delivery.task_id
        tenant = tenant_of_message(delivery.args, delivery.kwargs)
        endpoint = CURRENT_ENDPOINT.get()
        if error is None:
            ending = Ending("succeeded", result=result, tenant=tenant, endpoint=endpoint)
        else:
            status = "cancelled" if isinstance(error, TaskCancelled) else "failed"
            ending = Ending(
                status,
                error_type=error.error_type,
                error_message=error.message,
                tenant=tenant,
                endpoint=endpoint,
            )
        if result is not None:
            self._keep(task_id, GenerationResult.model_validate(result))
        claim_token = self._running.take(task_id)
        slot_release = self._slot_releases.pop(task_id, None)
        try:
            finished = ride_out(
                lambda: self._lifecycle.finish(
                    task_id, ending, claim_token, slot_release, delivery.message_tag
                ),
                "storing its end",
                self._policy.outage,
            )
        except RedisOutage:
            if slot_release is not None:
                slot_release.guard.release(slot_release)  # it lapses if Redis is still away
            raise
        self._unstored.pop(task_id, None)
        return finished
