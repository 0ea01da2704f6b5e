"""A task's RunPod Serverless job: submitted, polled while the task holds its endpoint slot
(``max_concurrency`` caps the jobs outstanding at RunPod), then polled from the queue, and its
final state turned into a result or an error."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from worker import keys
from worker.contract import GenerationRequest, GenerationResult
from worker.delivery import records
from worker.delivery.task_scripts import Progress
from worker.endpoints.clients import EndpointTarget
from worker.endpoints.serverless import FAILED_STATES, PENDING_STATES, Job, job_input, result_from
from worker.endpoints.serverless import failure as job_failure
from worker.errors import (
    GenQueueError,
    InvalidEndpointResponse,
    JobPending,
    RetryableEndpointError,
    TaskCancelled,
)
from worker.pipeline.retry_decision import RetryLater, later, poll_delay_s
from worker.redis_io.redis_outage import OutagePolicy, ride_out

log = logging.getLogger("genqueue.task")


#: A serverless job is polled in the task that submitted it, holding its endpoint slot, every
#: JOB_POLL_FIRST_S doubling to JOB_POLL_MAX_S, for up to JOB_HOLD_S; then from the queue.
JOB_POLL_FIRST_S = 0.25
JOB_POLL_MAX_S = 2.0
JOB_HOLD_S = 300.0


class ServerlessJobs:
    """The serverless side of :class:`~worker.pipeline.generation.Generation`'s attempts.

    :param redis_client: for the task's record (its job id, when it was sent, its polls).
    :param outage: how long each of those writes rides out an unreachable Redis.
    """

    def __init__(self, redis_client: redis.Redis, outage: OutagePolicy) -> None:
        self._redis = redis_client
        self._outage = outage

    def submit(
        self,
        task_id: str,
        target: EndpointTarget,
        prompt: str | None,
        messages: list[dict[str, str]] | None,
        params: dict[str, Any],
    ) -> Job:
        """Send the job (``/run``, or ``/runsync``) and note it on the task's record."""
        assert target.serverless is not None
        body = job_input(prompt, messages, params)
        if target.spec.mode == "runsync":
            job = target.serverless.run_sync(body)
        else:
            job = target.serverless.submit(body)
        sent_at = repr(time.time())
        ride_out(
            lambda: self._redis.hset(
                keys.task_record(task_id),
                mapping={records.F_JOB: job.job_id, records.F_JOB_AT: sent_at},
            ),
            f"noting its serverless job {job.job_id}",
            self._outage,
        )
        return job

    def await_job(self, request: GenerationRequest, target: EndpointTarget, job: Job) -> Job:
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
            self.cancel_id(target, job.job_id)
            raise
        return job

    def poll(
        self, task_id: str, request: GenerationRequest, target: EndpointTarget, progress: Progress
    ) -> GenerationResult | RetryLater:
        assert target.serverless is not None and progress.job_id is not None
        try:
            job = target.serverless.status(progress.job_id, request.params.max_tokens)
        except RetryableEndpointError as err:
            return later(request, err, progress.attempts, poll_delay_s(progress.polls))
        return self.outcome(
            task_id, request, target, job, polls=progress.polls, attempt=progress.attempts
        )

    def outcome(
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
            submitted = ride_out(
                lambda: self._redis.hget(keys.task_record(task_id), records.F_JOB_AT),
                "reading when its serverless job was sent",
                self._outage,
            )
            latency_s = time.time() - float(submitted) if submitted else 0.0
            return result_from(job, int(latency_s * 1000))
        if job.state in PENDING_STATES:
            ride_out(
                lambda: self._redis.hincrby(keys.task_record(task_id), records.F_POLLS, 1),
                "counting its poll",
                self._outage,
            )
            pending = JobPending(f"serverless job {job.job_id} is {job.state}")
            return later(request, pending, attempt, poll_delay_s(polls))
        if job.state == "CANCELLED":
            raise TaskCancelled(f"serverless job {job.job_id} was cancelled")
        if job.state in FAILED_STATES:
            raise job_failure(job)
        raise InvalidEndpointResponse(
            f"serverless job {job.job_id} is in unknown state {job.state}"
        )

    def cancel(self, target: EndpointTarget, progress: Progress) -> None:
        if target.serverless is None or progress.job_id is None:
            return
        self.cancel_id(target, progress.job_id)

    def cancel_id(self, target: EndpointTarget, job_id: str) -> None:
        assert target.serverless is not None
        try:
            target.serverless.cancel(job_id)
        except GenQueueError as err:
            log.warning("could not cancel serverless job %s: %s", job_id, err)
