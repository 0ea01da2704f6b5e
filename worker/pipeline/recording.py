"""A task's start and end as Redis records them, each one script riding out an unreachable
Redis; a finished result kept in memory until its end is stored (never called again for)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from worker.contract import GenerationResult
from worker.delivery.dead_letters import DeadLetters
from worker.delivery.heartbeat import RunningTasks
from worker.delivery.task_scripts import BrokerAcks, Ending, Finished, Lifecycle, Progress
from worker.errors import GenQueueError, TaskCancelled
from worker.limits.guard import SlotOffer, SlotRelease
from worker.observability.metrics import CURRENT_ENDPOINT
from worker.pipeline.attempt import ABANDONED, UNSTORED_MAX, Delivery
from worker.redis_io.redis_outage import OutagePolicy, RedisOutage, ride_out
from worker.tenancy.tenants import tenant_of_message

log = logging.getLogger("genqueue.task")


class TaskRecorder:
    """Records :class:`~worker.pipeline.generation.Generation`'s tasks: their start, their end.

    :param lifecycle: the task start and end scripts.
    :param running: this process's running claims (released by the end script).
    :param outage: how long a round trip rides out an unreachable Redis.
    :param max_deliveries: deliveries of a message whose worker never finished it, at most.
    :param broker_acks: how a task's end acknowledges its message (``None``: Celery does).
    :param dead_letters: where a poison task's request goes.
    """

    def __init__(
        self,
        lifecycle: Lifecycle,
        running: RunningTasks,
        outage: OutagePolicy,
        max_deliveries: int,
        broker_acks: BrokerAcks | None,
        dead_letters: DeadLetters,
    ) -> None:
        self._lifecycle = lifecycle
        self._dead_letters = dead_letters
        self._running = running
        self._outage = outage
        self._max_deliveries = max_deliveries
        self._broker_acks = broker_acks
        #: Slots of successful calls whose release rides on the task's end (:meth:`finish`).
        self.slot_releases: dict[str, SlotRelease] = {}
        #: Results whose end script did not get through, by task id (see :meth:`abandon`).
        self.unstored: OrderedDict[str, GenerationResult] = OrderedDict()

    def abandon(self, delivery: Delivery, err: RedisOutage) -> str:
        """Give the task up for now, Redis being away past the outage budget.

        Nothing was written (each script is all or nothing). The message's ack stays local, so
        its unacknowledged entry stays in Redis and the message comes back after the visibility
        timeout; a result this process finished is kept (:attr:`unstored`) and stored when it
        does, without a second endpoint call (by another process, the endpoint is called again).
        """
        kept = delivery.task_id in self.unstored
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

    def keep(self, task_id: str, result: GenerationResult) -> None:
        self.unstored[task_id] = result
        self.unstored.move_to_end(task_id)
        while len(self.unstored) > UNSTORED_MAX:
            self.unstored.popitem(last=False)

    def begin(self, delivery: Delivery, offer: SlotOffer | None) -> Progress:
        """The task's start script, riding out an unreachable Redis."""
        try:
            return ride_out(
                lambda: self._lifecycle.begin(
                    delivery.task_id,
                    delivery.round,
                    delivery.hostname,
                    offer,
                    self._max_deliveries,
                ),
                "its start",
                self._outage,
            )
        except RedisOutage:
            if offer is not None:
                offer.guard.withdraw(offer)
            raise

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Keep a poison task's request on the dead-letter list, riding out an unreachable
        Redis."""
        letter = (delivery.kwargs or {}).get("request", delivery.args)
        ride_out(
            lambda: self._dead_letters.add(delivery.task_id, letter, reason),
            "its dead letter",
            self._outage,
        )

    def retrying(self, task_id: str, error: GenQueueError) -> None:
        """Note ``error`` on the record as the task's ``last_error`` (its status shows it while
        the task retries), riding out an unreachable Redis."""
        ride_out(
            lambda: self._lifecycle.note_error(task_id, error.error_type, error.message),
            "noting its last error",
            self._outage,
        )

    def move(self, task_id: str, endpoint: str, tried: list[str]) -> None:
        """Record the task's move to ``endpoint`` (a fallback), having tried ``tried``, riding
        out an unreachable Redis."""
        ride_out(
            lambda: self._lifecycle.move(task_id, endpoint, tried),
            "its move to the next endpoint",
            self._outage,
        )

    def failed_call(self, tenant: str, endpoint: str, latency_s: float) -> None:
        """Count a call that gave no result in the tenant's GPU time, riding out an unreachable
        Redis (:meth:`Lifecycle.add_call_time`)."""
        gpu_ms = int(latency_s * 1000)
        ride_out(
            lambda: self._lifecycle.add_call_time(tenant, endpoint, gpu_ms),
            "counting its call's GPU time",
            self._outage,
        )

    def finish(
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
            self.keep(task_id, GenerationResult.model_validate(result))
        claim_token = self._running.take(task_id)
        slot_release = self.slot_releases.pop(task_id, None)
        try:
            finished = ride_out(
                lambda: self._lifecycle.finish(
                    task_id,
                    ending,
                    claim_token,
                    slot_release,
                    delivery.message_tag,
                    delivery.queue_list,
                ),
                "storing its end",
                self._outage,
            )
        except RedisOutage:
            if slot_release is not None:
                slot_release.guard.release(slot_release)  # it lapses if Redis is still away
            raise
        self.unstored.pop(task_id, None)
        return finished
