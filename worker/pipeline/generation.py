"""One attempt at a generation task: validate, render, call the endpoint under its guard.

Knows nothing of Celery: :meth:`Generation.run` returns a result dict, a :class:`RetryLater`
or :data:`DUPLICATE`, and raises a :class:`~worker.errors.GenQueueError` for a final failure.
The Celery task in :mod:`worker.tasks` maps those onto ``return``, ``self.retry``, ``Ignore``
and ``raise``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import redis

from worker.contract import GenerationRequest, GenerationResult
from worker.delivery.dead_letters import DeadLetters
from worker.delivery.heartbeat import RunningTasks
from worker.delivery.task_scripts import BrokerAcks, Lifecycle, Progress
from worker.delivery.token_stream import TokenStream
from worker.endpoints.clients import EndpointTarget
from worker.endpoints.config import Endpoints
from worker.endpoints.params import call_params
from worker.endpoints.serverless import Job
from worker.errors import (
    AlreadyRunning,
    CircuitOpenError,
    GenQueueError,
    InvalidRequest,
    PermanentEndpointError,
    PoisonTask,
    RateLimitedError,
    RetriesExhausted,
    RetryableEndpointError,
    TaskCancelled,
)
from worker.limits.auto_limit import overloaded, sample
from worker.limits.cost import turn_cost
from worker.limits.guard import Claim, GrantedSlot, Outcome, Slot, SlotOffer
from worker.observability.metrics import CURRENT_ENDPOINT, TaskObserver, seconds_since
from worker.pipeline.affinity import affinity_for
from worker.pipeline.attempt import DUPLICATE, Call, Delivery, GenerationPolicy, message_dicts
from worker.pipeline.payload import parse_payload
from worker.pipeline.recording import TaskRecorder
from worker.pipeline.render import PromptRenderer
from worker.pipeline.request_faults import RequestFaults
from worker.pipeline.retry_decision import (
    RetryLater,
    after,
    fall_back_to,
    later,
    next_endpoint,
    retry_or_give_up,
    time_left,
)
from worker.pipeline.serverless_jobs import ServerlessJobs
from worker.redis_io.redis_outage import RedisOutage
from worker.tenancy.tenants import INTERNAL, Tenants

log = logging.getLogger("genqueue.task")


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
    :param result_client: for Celery's results, when they live in a Redis of their own
        (``GENQUEUE_RESULT_REDIS_URL``); ``None``: in ``redis_client``'s.
    :param tenants: the tenants now (the file is re-read): a task's priority is capped at its
        tenant's ``max_priority`` and it falls back only to endpoints its tenant may use.
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
        result_client: redis.Redis | None = None,
        tenants: Callable[[], Tenants] = Tenants,
    ) -> None:
        self._redis = redis_client
        self._tenants = tenants
        self._renderer = renderer
        self._endpoints = endpoints
        self._targets = targets
        self._running = running
        self._policy = policy
        self._observe = observer or TaskObserver()
        self._faults = RequestFaults(redis_client, policy.outage)
        self._jobs = ServerlessJobs(redis_client, policy.outage)
        #: Slots granted by the task's start script, until the call takes them over.
        self._granted: dict[str, GrantedSlot] = {}
        lifecycle = Lifecycle(
            redis_client,
            policy.record_ttl_s,
            policy.events_maxlen,
            broker_acks,
            policy.usage_ttl_s,
            results=result_client if result_client is not redis_client else None,
        )
        self._record = TaskRecorder(
            lifecycle, running, policy.outage, policy.max_deliveries, broker_acks, dead_letters
        )
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
            return self._record.abandon(delivery, err)
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
            slot_release = self._record.slot_releases.pop(delivery.task_id, None)
            if slot_release is not None:
                slot_release.guard.release(slot_release)
            granted = self._granted.pop(delivery.task_id, None)
            if granted is not None:  # the task ended before its call (an invalid prompt)
                granted.offer.guard.release_granted(granted)

    def _run(self, delivery: Delivery) -> Any:
        task_id = delivery.task_id
        try:
            outcome = self._attempt(delivery)
        except GenQueueError as err:
            if isinstance(err, PoisonTask):
                self._record.dead_letter(delivery, err.message)
            end = self._record.finish(delivery, err)
            self._observe.failed(
                task_id, end.attempts, err.error_type, err.message, seconds_since(end.created_at)
            )
            raise
        if isinstance(outcome, RetryLater):
            self._record.retrying(task_id, error := outcome.error)
            self._observe.retrying(
                task_id, outcome.attempt, error.error_type, error.message, outcome.delay_s,
                outcome.latency_ms,
            )  # fmt: skip
            return outcome
        if not isinstance(outcome, GenerationResult):
            log.info("task %s is running on another worker; dropping this copy", task_id)
            return DUPLICATE
        result = outcome.model_dump(mode="json")
        end = self._record.finish(delivery, None, result)
        if end.cancel_requested:
            cancelled = TaskCancelled("the task was cancelled while it ran; result discarded")
            end = self._record.finish(delivery, cancelled)
            self._observe.failed(
                task_id, end.attempts, cancelled.error_type, cancelled.message,
                seconds_since(end.created_at),
            )  # fmt: skip
            raise cancelled
        self._observe.succeeded(task_id, end.attempts, outcome, seconds_since(end.created_at))
        return result

    def _attempt(self, delivery: Delivery) -> GenerationResult | RetryLater | str:
        task_id = delivery.task_id
        request = self._tenants().held_to_tenant(parse_payload(delivery.args, delivery.kwargs))
        offer = self._offer(task_id, request)
        progress = self._record.begin(delivery, offer)
        if progress.granted is not None:
            self._granted[task_id] = progress.granted
            self._running.hold(task_id, progress.granted.offer.claim.token)
        elif offer is not None:
            offer.guard.withdraw(offer)
        if progress.stored_result is not None:
            log.info("task %s already has a result; not calling the endpoint again", task_id)
            return progress.stored_result
        kept = self._record.unstored.get(task_id)
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
            self._jobs.cancel(target, progress)
            raise TaskCancelled("the task was cancelled before it ran")
        if progress.deliveries > self._policy.max_deliveries:
            raise PoisonTask(
                f"delivered {progress.deliveries} times and its worker never finished it "
                "(killed or crashed each time); moved to the dead-letter list"
            )
        time_left(request)
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
        """The slot the task's start script may take in passing: its expected endpoint's, while
        that endpoint's gate is open and the deadline has not passed."""
        name = request.endpoint or self._endpoints.default
        target = self._targets.get(name)
        if target is None:
            return None
        if request.deadline is not None and request.deadline <= datetime.now(UTC):
            return None
        return target.guard.offer(self._claim(task_id, name, request))

    def _claim(self, task_id: str, endpoint: str, request: GenerationRequest) -> Claim:
        """A new running claim on ``task_id`` for a slot on ``endpoint`` (see :class:`Claim`)."""
        spec = self._endpoints.get(endpoint)
        return Claim(
            task_id, self._running.new_token(), self._running.claim_ttl_ms, endpoint,
            priority=request.priority, tenant=getattr(request, "tenant", None),
            cost=turn_cost(spec.fairness, request, self._policy.default_max_tokens),
            deadline=request.deadline, affinity=affinity_for(request, spec),
        )  # fmt: skip

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
        call = Call(
            prompt=None if chat else self._renderer.render(request, template),
            messages=[dict(m) for m in message_dicts(request)] if chat else None,
            params=call_params(request, spec, self._policy.default_max_tokens),
            stream=request.stream,
        )
        if spec.kind == "runpod-serverless" and progress.job_id is not None:
            return self._jobs.poll(task_id, request, target, progress)
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
                target.guard.pick_replica(slot, claim.affinity)  # a pool's
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

    def _call(
        self,
        task_id: str,
        request: GenerationRequest,
        target: EndpointTarget,
        call: Call,
        progress: Progress,
        slot: Slot,
    ) -> GenerationResult | RetryLater | str:
        read_timeout_s = time_left(request)  # the wait for a slot may have spent it
        attempt, on_endpoint = slot.attempt, slot.attempt_on_endpoint
        self._observe.started(task_id, attempt, call.prompt or "")
        started = time.perf_counter()
        try:
            with self._running.cancellable(task_id):
                result = self._send(task_id, target, call, read_timeout_s, slot.replica)
                if isinstance(result, Job):
                    result = self._jobs.await_job(request, target, result)
        except RetryableEndpointError as err:
            latency_s = self._called(started)
            slot.sample = sample(latency_s, overload=overloaded(err))  # ("auto" limits)
            self._record.failed_call(request.tenant or INTERNAL, target.spec.name, latency_s)
            where = target.replica_url(slot.replica)  # a pool's replica's, for its health
            verdict = self._faults.judge(task_id, target.spec.name, where, err, target.health_ids())
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
            latency_s = self._called(started)
            self._record.failed_call(request.tenant or INTERNAL, target.spec.name, latency_s)
            raise
        except TaskCancelled:  # the call was cut short: the GPU worked until then
            latency_s = time.perf_counter() - started
            self._record.failed_call(request.tenant or INTERNAL, target.spec.name, latency_s)
            raise
        latency_s = self._called(started)
        slot.outcome = Outcome.OK
        if isinstance(result, GenerationResult):
            slot.tokens = result.usage.total_tokens
            slot.sample = sample(latency_s, result.usage.completion_tokens)
            self._record.slot_releases[task_id] = target.guard.hand_off(slot)
        if isinstance(result, Job):
            return self._jobs.outcome(task_id, request, target, result, polls=0, attempt=attempt)
        return result

    def _send(
        self, task_id: str, target: EndpointTarget, call: Call, read_s: float | None, at: int | None
    ) -> GenerationResult | Job:
        if target.serverless is not None:
            return self._jobs.submit(task_id, target, call.prompt, call.messages, call.params)
        client = target.client_for(at)  # a pool's replica
        assert client is not None
        on_piece = None
        if call.stream:
            self._streamed.add(task_id)
            on_piece = self._tokens.call(task_id)
        if call.messages is not None:
            return client.chat(call.messages, call.params, read_s, on_piece)
        return client.complete(call.prompt or "", call.params, read_s, on_piece)

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
        chain = self._tenants().usable(request, self._endpoints.chain(request.endpoint))
        following = next_endpoint(chain, tried)
        if following is None:
            return None
        self._record.move(task_id, following, tried)
        log.info("task %s moves from endpoint %s to %s: %s", task_id, name, following, err)
        return fall_back_to(following, name, err, progress.attempts)

    def _called(self, started: float) -> float:
        latency_s = time.perf_counter() - started
        self._observe.called(latency_s)
        return latency_s
