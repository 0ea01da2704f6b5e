"""What protects one endpoint, shared by every worker through Redis.

- **A concurrency cap.** Each call holds a token in a sorted set scored by its expiry (Redis
  server time, so the clocks of different machines do not matter). A background heartbeat
  pushes the expiry of the tokens this process holds, so the token of a killed worker lapses
  after ``lease_ttl_s`` and frees its slot.
- **A circuit breaker.** ``failure_threshold`` consecutive retryable failures open it for
  ``cooldown_s``: calls are refused with :class:`~worker.errors.CircuitOpenError` (tasks are
  delayed, not failed).
  After the cooldown one probe call may go; its success closes the breaker, its failure opens
  it again for 1.5 times the last cooldown, up to ``cooldown_max_s``: a pod back after a short
  outage is used within a second or two, one down for long is probed rarely.
- **Successes served.** Each success counts in the breaker hash's ``served`` field, so that a
  task failing the same way on every attempt while other tasks succeed can be told from an
  endpoint that is down (see :mod:`worker.faults`).

Both live in the same Lua scripts, so a call costs one round trip to start and one to end.
A caller that finds every slot taken joins the endpoint's admission queue
(:mod:`worker.limits.admission`) and sleeps until a freed slot is handed to it: by priority,
then by its tenant's fair share, across every worker (see docs/scheduling.md).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

import redis

from worker import keys, lua
from worker.contract import PRIORITY_DEFAULT
from worker.errors import AlreadyRunning, TaskCancelled, circuit_open, rate_limited
from worker.limits import cost
from worker.limits.admission import Admission, Weights, band, equal_weights
from worker.limits.slot_gate import SlotGate
from worker.redis_outage import OutagePolicy, RedisOutage, ride_out

log = logging.getLogger(__name__)


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
    claim: Claim | None = None


@dataclass(frozen=True)
class SlotOffer:
    """A slot to try for in passing, in another script that calls ``acquire_slot`` with
    ``keys`` and ``args`` (its arguments, ``now`` aside, then the admission queue's keys and
    arguments): taken only if it is free and no task waits for one."""

    guard: EndpointGuard
    keys: tuple[str, ...]
    args: tuple[str | int, ...]
    token: str
    claim: Claim


@dataclass(frozen=True)
class GrantedSlot:
    """A :class:`SlotOffer` the script granted, with the task's attempt numbers."""

    offer: SlotOffer
    attempt: int
    attempt_on_endpoint: int


@dataclass(frozen=True)
class SlotRelease:
    """The release of a held slot, for a script that calls :data:`RELEASE_FUNCTION` with
    ``keys`` and ``args`` (its ``release_slot(...)`` arguments, ``now`` aside); the guard
    renews the slot until :meth:`EndpointGuard.settle` or :meth:`EndpointGuard.release`."""

    guard: EndpointGuard
    keys: tuple[str, ...]
    args: tuple[str | int, ...]
    token: str
    #: Fair by tokens: the settling of the turn's cost (:func:`worker.limits.cost.settle_args`).
    settle: tuple[str | int, ...] = ()


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


@dataclass(frozen=True)
class GuardPolicy:
    limit: int = 1
    lease_ttl_s: float = 30.0
    failure_threshold: int = 5
    #: The first cooldown of an open breaker; each failed probe multiplies it by 1.5, up to
    #: ``cooldown_max_s``.
    cooldown_s: float = 1.0
    cooldown_max_s: float = 5.0
    #: Every how many slots one goes to the priority band of the task that has waited longest
    #: (0: strict priority; see :mod:`worker.limits.admission`).
    oldest_every: int = 10
    #: Shared per-minute limits (0: none); tokens are counted after each call.
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    #: How long the wait for a slot rides out an unreachable Redis.
    outage: OutagePolicy = field(default_factory=OutagePolicy)


class EndpointGuard:
    """The concurrency cap and circuit breaker of the endpoint ``endpoint_id``.

    :param client: the Redis client.
    :param endpoint_id: a short secret-free name of the endpoint (see :mod:`worker.keys`).
    :param policy: the cap, the lease TTL and the breaker's threshold and cooldown.
    :param weights: a tenant's weight in the admission queue's fair shares.
    :param gate: passed before a slot is sought (``None``: none).
    """

    def __init__(
        self,
        client: redis.Redis,
        endpoint_id: str,
        policy: GuardPolicy,
        weights: Weights = equal_weights,
        gate: SlotGate | None = None,
    ) -> None:
        self._client = client
        self.gate = gate
        self._keys = [
            keys.lease(endpoint_id),
            keys.breaker(endpoint_id),
            keys.breaker_probe(endpoint_id),
            keys.rate(endpoint_id),
        ]
        self._policy = policy
        self._ttl_ms = int(policy.lease_ttl_s * 1000)
        self._cooldown_ms = int(policy.cooldown_s * 1000)
        # The scripts' cooldown argument: the first and the longest, in ms.
        longest_ms = int(max(policy.cooldown_max_s, policy.cooldown_s) * 1000)
        self._cooldowns = f"{self._cooldown_ms}:{longest_ms}"
        self._admission = Admission(
            client, endpoint_id, policy.limit, policy.oldest_every, weights, self._ttl_ms
        )
        self._presence = self._admission.presence
        #: The slots this process holds, renewed by the heartbeat; those of them whose call
        #: ended, their release left to another script (:meth:`hand_off`).
        self._held: set[str] = set()
        self._handed_off: set[str] = set()
        #: Taken by the heartbeat's renewal and by a release's end of renewing: a lease renewed
        #: (re-added) after its release would hold a slot nobody uses until it lapses.
        self._renew_lock = threading.Lock()
        self._acquire = lua.register(client, "worker.limits", "slot_acquire")
        self._release_script = lua.register(client, "worker.limits", "slot_release")
        self._renew = lua.register(client, "worker.limits", "lease_renew")
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_lock = threading.Lock()
        self._stopped = threading.Event()

    def offer(self, claim: Claim) -> SlotOffer | None:
        """A slot for ``claim`` to try for in passing (no waiting here); none while the gate
        is closed."""
        if self.gate is not None and not self.gate.is_open():
            return None
        token = self._presence.token()
        policy = self._policy
        return SlotOffer(
            guard=self,
            keys=(
                *self._keys,
                keys.running(claim.task_id),
                keys.task_record(claim.task_id),
                *self._admission.keys,
            ),
            args=(
                policy.limit,
                self._ttl_ms,
                token,
                self._cooldown_ms,
                policy.requests_per_minute,
                policy.tokens_per_minute,
                claim.token,
                claim.ttl_ms,
                claim.endpoint,
                *self._admission.args(claim.priority, claim.tenant, claim.cost or 1),
            ),
            token=token,
            claim=claim,
        )

    def withdraw(self, offer: SlotOffer) -> None:
        """The script did not grant ``offer`` (nothing is held for it)."""

    def release_granted(self, granted: GrantedSlot) -> None:
        """Release a granted slot that no call took over (the task ended before its call)."""
        self._release(granted.offer.token, Slot())

    @contextlib.contextmanager
    def slot(
        self, claim: Claim | None = None, granted: GrantedSlot | None = None
    ) -> Iterator[Slot]:
        """Wait for a slot and hold it for the ``with`` body; :class:`CircuitOpenError` if open,
        :class:`RateLimitedError` if a rate limit is spent, :class:`AlreadyRunning` if ``claim``
        is held by another worker. With ``granted``, the slot is already held: no wait."""
        slot = Slot(claim=claim)
        if granted is not None:
            slot.token = token = granted.offer.token
            slot.attempt = granted.attempt
            slot.attempt_on_endpoint = granted.attempt_on_endpoint
            self._held.add(token)
            self._ensure_heartbeat()
        else:
            if self.gate is not None:
                self.gate.wait(claim.deadline if claim else None)
            slot.token = token = self._wait_for_slot(claim, slot)
        try:
            yield slot
        finally:
            if not slot.handed_off:
                with self._renew_lock:
                    self._held.discard(token)
                self._release(token, slot)

    def hand_off(self, slot: Slot) -> SlotRelease:
        """Leave the release of ``slot`` (a successful call) to another script, so that it
        costs no round trip of its own; the ``with`` block then ends without releasing it, and
        :meth:`settle` (or :meth:`release`) must follow."""
        slot.handed_off = True
        self._handed_off.add(slot.token)
        args = (
            slot.token, slot.outcome.value, self._policy.failure_threshold, self._cooldowns,
            slot.tokens, self._policy.limit, self._admission.every, self._admission.queues,
        )  # fmt: skip
        claim = slot.claim or Claim("", "", 0, "")
        settle = cost.settle_args(
            claim.cost, band(claim.priority), self._admission.weight(claim.tenant)
        )
        return SlotRelease(self, (*self._keys, *self._admission.keys), args, slot.token, settle)

    def settle(self, release: SlotRelease) -> None:
        """Another script released the slot of ``release``: stop renewing it, and let the
        next caller of this process contend for a slot (once per handed-off slot)."""
        self._held.discard(release.token)
        self._handed_off.discard(release.token)

    def release(self, release: SlotRelease) -> None:
        """Release a handed-off slot after all (its script did not run); once per slot."""
        self._held.discard(release.token)
        self._handed_off.discard(release.token)
        outcome, tokens = Outcome(release.args[1]), int(release.args[4])
        self._release(release.token, Slot(outcome=outcome, tokens=tokens))

    def _wait_for_slot(self, claim: Claim | None, slot: Slot) -> str:
        """Take a slot, or wait in the admission queue until one is handed over."""
        token = self._presence.token()
        policy = self._policy
        admission = self._admission
        script_keys = [*self._keys, *admission.keys]
        priority, tenant = (claim.priority, claim.tenant) if claim else (PRIORITY_DEFAULT, None)
        args: list[int | str] = [
            policy.limit, self._ttl_ms, token, self._cooldown_ms,
            policy.requests_per_minute, policy.tokens_per_minute,
            *admission.args(priority, tenant, (claim.cost if claim else None) or 1),
        ]  # fmt: skip
        if claim is not None:
            script_keys += [keys.running(claim.task_id), keys.task_record(claim.task_id)]
            args += [claim.token, claim.ttl_ms, claim.endpoint]

        def acquire() -> list[int]:
            return [int(n) for n in self._acquire(keys=script_keys, args=args)]

        granted = admission.expect(token)
        answered = False
        try:
            while True:
                granted.clear()
                code, wait_ms, *attempts = ride_out(acquire, "its endpoint slot", policy.outage)
                if code != 0:
                    answered = True
                    break
                self._ensure_heartbeat()  # it renews this waiter's place too
                granted.wait()
        finally:
            if answered:
                admission.forget(token)
            else:  # interrupted while waiting: the place (or a slot handed over) goes on
                admission.leave(token)
        if code == 2:
            raise circuit_open(wait_ms / 1000)
        if code == 3:
            raise rate_limited(wait_ms / 1000)
        if code == 4:
            raise AlreadyRunning()
        if code == 5:
            raise TaskCancelled("the task was cancelled before it ran")
        if attempts:
            slot.attempt, slot.attempt_on_endpoint = attempts
        self._held.add(token)
        self._ensure_heartbeat()
        return token

    def _release(self, token: str, slot: Slot) -> None:
        args = [
            token, slot.outcome.value, self._policy.failure_threshold, self._cooldowns,
            slot.tokens, self._policy.limit, self._admission.every, self._admission.queues,
        ]  # fmt: skip
        script_keys = [*self._keys, *self._admission.keys]
        try:
            # Ridden out: a lease left behind holds a slot of the cap until it lapses.
            opened = ride_out(
                lambda: self._release_script(keys=script_keys, args=args),
                "releasing its endpoint slot",
                self._policy.outage,
            )
        except (RedisOutage, redis.RedisError):
            # The token lapses by itself after the lease TTL; nothing is lost.
            log.warning("could not release a concurrency lease; it expires by itself")
            return
        if opened:
            log.warning(
                "endpoint circuit breaker opened after %d consecutive failures; holding tasks "
                "back for %.1fs",
                self._policy.failure_threshold,
                int(opened) / 1000,
            )

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.is_alive():
            return
        # start() waits for the thread to run, and lets other tasks (greenlets) run meanwhile:
        # without the lock, each of them would start a heartbeat of its own.
        with self._heartbeat_lock:
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._heartbeat = threading.Thread(
                    target=self._renew_forever, name="genqueue-lease-heartbeat", daemon=True
                )
                self._heartbeat.start()

    def _renew_forever(self) -> None:
        interval_s = self._ttl_ms / 3000
        while not self._stopped.wait(interval_s):
            held = list(self._held)
            try:
                with self._renew_lock:
                    self._renew_held()
                self._admission.renew(self._ttl_ms)
                self._admission.sweep()  # this process is alive; a dead one's slots go
            except redis.RedisError:
                log.warning("could not renew %d concurrency leases or waiters", len(held))

    def _renew_held(self) -> None:
        """Renew the held leases; those of running calls are added back if Redis lost them
        (``scripts/lease_renew.lua``)."""
        held = list(self._held)
        if not held:
            return
        running = [token for token in held if token not in self._handed_off]
        ended = [token for token in held if token in self._handed_off]
        self._renew(keys=self._keys[:1], args=[len(running), *running, *ended, self._ttl_ms])

    def close(self) -> None:
        self._stopped.set()
        self._admission.close()
