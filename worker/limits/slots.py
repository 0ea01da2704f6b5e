"""What a call at an endpoint holds: its slot, the claim it is granted with, and the guard's
policy (the offer of a slot in passing and the release another script does, which name their
guard, are :mod:`worker.limits.guard`'s)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from worker.contract import PRIORITY_DEFAULT
from worker.errors import CircuitOpenError, RateLimitedError
from worker.limits.auto_limit import AutoBounds
from worker.redis_io.redis_outage import OutagePolicy
from worker.settings import default_of


def circuit_open(retry_in_s: float) -> CircuitOpenError:
    """The error of a call held back by the open breaker (no attempt spent)."""
    message = f"the endpoint's circuit breaker is open; retry in {retry_in_s:.1f}s"
    return CircuitOpenError(message, retry_after_s=retry_in_s)


def rate_limited(retry_in_s: float) -> RateLimitedError:
    """The error of a call held back by a spent rate limit (no attempt spent)."""
    message = f"the endpoint's rate limit is spent; retry in {retry_in_s:.1f}s"
    return RateLimitedError(message, retry_after_s=retry_in_s)


class Outcome(Enum):
    OK = "ok"  # the endpoint answered (a 4xx too: it is up)
    FAILURE = "failure"  # a retryable failure: counts towards opening the breaker
    NEUTRAL = "neutral"  # says nothing of the endpoint (cancelled, for instance)


@dataclass
class Slot:
    """A held slot; set ``outcome`` (and ``tokens`` used) before leaving the ``with`` block.

    :meth:`EndpointGuard.hand_off` leaves its release to another script instead.
    """

    outcome: Outcome = Outcome.NEUTRAL
    tokens: int = 0
    #: With a :class:`Claim`: the task's attempt number, in all and on this endpoint.
    attempt: int = 0
    attempt_on_endpoint: int = 0
    token: str = ""
    handed_off: bool = False
    sample: str = ""  # the call's end, for an "auto" limit (worker.limits.auto_limit.sample)
    claim: Claim | None = None
    #: A pool's slot: the replica its call goes to (``None``: not a pool, or none picked yet).
    replica: int | None = None


@dataclass(frozen=True)
class Claim:
    """A task to claim as running here and whose attempt to count, in the same round trip
    that grants the slot (the claim is ``worker.delivery.heartbeat``'s; see
    ``worker.delivery.task_scripts``)."""

    task_id: str
    token: str
    ttl_ms: int
    endpoint: str
    #: Where the task waits in the endpoint's admission queue: its priority and tenant.
    priority: int = PRIORITY_DEFAULT
    tenant: str | None = None
    #: Its turn's estimated tokens where the endpoint is fair by tokens (None: by tasks).
    cost: int | None = None
    #: The task's deadline, which a wait at the endpoint's gate respects.
    deadline: datetime | None = None
    #: A pool's affinity key (a digest of the prefix or session; "": none).
    affinity: str = ""


@dataclass(frozen=True)
class GuardPolicy:
    limit: int | AutoBounds = 1  # a fixed cap, or the bounds of an "auto" one
    lease_ttl_s: float = default_of("slot_lease_ttl_s")
    failure_threshold: int = default_of("breaker_failure_threshold")
    #: The first cooldown of an open breaker; each failed probe multiplies it by 1.5, up to
    #: ``cooldown_max_s``.
    cooldown_s: float = default_of("breaker_cooldown_s")
    cooldown_max_s: float = default_of("breaker_cooldown_max_s")
    #: Every how many slots one goes to the priority band of the task that has waited longest
    #: (0: strict priority; see :mod:`worker.limits.admission`).
    oldest_every: int = default_of("oldest_band_every")
    #: Shared per-minute limits (0: none); tokens are counted after each call.
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    #: How long the wait for a slot rides out an unreachable Redis.
    outage: OutagePolicy = field(default_factory=OutagePolicy)
