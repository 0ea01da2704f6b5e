"""What one attempt of a task takes and gives: the delivery, the call, the policy, the outcomes
other than a result (a duplicate copy, a task given up while Redis is away)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.contract import GenerationRequest
from worker.delivery.task_scripts import USAGE_TTL_S
from worker.pipeline.backoff import RetryPolicy
from worker.pipeline.render import as_messages
from worker.pipeline.retry_decision import RetryLimits
from worker.redis_io.redis_outage import OutagePolicy
from worker.settings import default_of

#: Returned when another live worker runs the same task: this copy is dropped.
DUPLICATE = "duplicate"
#: Returned when Redis stayed away past the outage budget: nothing was written, and the
#: message is left to come back (see :meth:`~worker.pipeline.recording.TaskRecorder.abandon`).
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
    #: The Redis list the message came from (its queue and priority step), whose backlog the
    #: end settles a turn's cost in (fair by tokens: worker.limits.cost); '' when unknown.
    queue_list: str = ""


@dataclass(frozen=True)
class Call:
    """What goes to the endpoint: a rendered prompt, or messages as they are (chat)."""

    prompt: str | None
    messages: list[dict[str, str]] | None
    params: dict[str, Any]
    #: Stream the answer into the task's token stream.
    stream: bool = False


def message_dicts(request: GenerationRequest) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in as_messages(request)]


@dataclass(frozen=True)
class GenerationPolicy:
    """Attempts, backoff, deadline, retention and deliveries of every task."""

    retry: RetryPolicy
    deadline_s: float
    record_ttl_s: int
    max_deliveries: int
    events_maxlen: int = default_of("events_maxlen")
    outage: OutagePolicy = field(default_factory=OutagePolicy)
    #: ``max_tokens`` of a request that gives none.
    default_max_tokens: int = default_of("default_max_tokens")
    #: How long a tenant's usage of a day is kept.
    usage_ttl_s: int = USAGE_TTL_S

    @property
    def retry_limits(self) -> RetryLimits:
        return RetryLimits(self.retry, self.deadline_s)
