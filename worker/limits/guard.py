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
  endpoint that is down (see :mod:`worker.pipeline.request_faults`).

Both live in the same Lua scripts, so a call costs one round trip to start and one to end.
A caller that finds every slot taken joins the endpoint's admission queue
(:mod:`worker.limits.admission`) and sleeps until a freed slot is handed to it: by priority,
then by its tenant's fair share, across every worker (see docs/scheduling.md).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import redis

from worker import keys, lua
from worker.contract import PRIORITY_DEFAULT
from worker.errors import AlreadyRunning, TaskCancelled
from worker.limits import cost, script_replies
from worker.limits.admission import Admission, Weights, band, equal_weights
from worker.limits.auto_limit import limit_spec
from worker.limits.pool import FULL, REPICK_EVERY_S, REPICK_FOR_S, ReplicaPool
from worker.limits.script_replies import SlotAnswer, SlotReply
from worker.limits.slot_gate import SlotGate
from worker.limits.slot_values import GrantedSlot, SlotOffer, SlotRelease
from worker.limits.slots import Claim, GuardPolicy, Outcome, Slot, circuit_open, rate_limited
from worker.redis_io.redis_outage import RedisOutage, ride_out

__all__ = [
    "Claim", "EndpointGuard", "GrantedSlot", "GuardPolicy", "Outcome", "Slot", "SlotOffer",
    "SlotRelease", "circuit_open", "rate_limited",
]  # fmt: skip

log = logging.getLogger(__name__)


class EndpointGuard:
    """The concurrency cap and circuit breaker of the endpoint ``endpoint_id``.

    :param client: the Redis client.
    :param endpoint_id: a short secret-free name of the endpoint (see :mod:`worker.keys`).
    :param policy: the cap, the lease TTL and the breaker's threshold and cooldown.
    :param weights: a tenant's weight in the admission queue's fair shares.
    :param gate: passed before a slot is sought (``None``: none).
    :param pool: the replicas of a pool endpoint (``None``: one server), whose slots it caps
        together and whose calls it spreads (:mod:`worker.limits.pool`).
    """

    def __init__(
        self,
        client: redis.Redis,
        endpoint_id: str,
        policy: GuardPolicy,
        weights: Weights = equal_weights,
        gate: SlotGate | None = None,
        pool: ReplicaPool | None = None,
    ) -> None:
        self._client = client
        self.gate = gate
        self.pool = pool
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
        # As the scripts take it: a fixed cap, an "auto" spec, or the pool's replicas.
        limit = limit_spec(endpoint_id, policy.limit) if pool is None else pool.spec
        self._admission = Admission(
            client, endpoint_id, limit, policy.oldest_every, weights, self._ttl_ms
        )
        self._presence = self._admission.presence
        #: The slots this process holds, renewed by the heartbeat; those of them whose call
        #: ended, their release left to another script (:meth:`hand_off`).
        self._held: set[str] = set()
        self._handed_off: set[str] = set()
        #: Taken by the heartbeat's renewal and by a release's end of renewing: a lease renewed
        #: (re-added) after its release would hold a slot nobody uses until it lapses.
        self._renew_lock = threading.Lock()
        self._acquire = lua.named(client, "worker.limits", "slot_acquire")
        self._release_script = lua.named(client, "worker.limits", "slot_release")
        self._renew = lua.named(client, "worker.limits", "lease_renew")
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
                self._admission.limit(),
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
        """Nothing to give back: a start script that did not grant ``offer`` took nothing for it,
        and this process holds no permit of its own for an offer (a no-op, kept for its callers)."""

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
            slot.tokens, self._admission.limit(), self._admission.every, self._admission.queues,
            slot.sample,
        )  # fmt: skip
        script_keys = (*self._slot_keys(slot.replica), *self._admission.keys)
        claim = slot.claim or Claim("", "", 0, "")
        settle = cost.settle_args(
            claim.cost, band(claim.priority), self._admission.weight(claim.tenant)
        )
        return SlotRelease(self, script_keys, args, slot.token, slot.replica, settle)

    def settle(self, release: SlotRelease) -> None:
        """Another script released the slot of ``release``: stop renewing it, and let the
        next caller of this process contend for a slot (once per handed-off slot)."""
        self._held.discard(release.token)
        self._handed_off.discard(release.token)

    def release(self, release: SlotRelease) -> None:
        """Release a handed-off slot after all (its script did not run); once per slot."""
        self._held.discard(release.token)
        self._handed_off.discard(release.token)
        outcome, tokens, sample = Outcome(release.args[1]), int(release.args[4]), release.args[8]
        self._release(
            release.token,
            Slot(outcome=outcome, tokens=tokens, replica=release.replica, sample=str(sample)),
        )

    def _wait_for_slot(self, claim: Claim | None, slot: Slot) -> str:
        """Take a slot, or wait in the admission queue until one is handed over."""
        token = self._presence.token()
        policy = self._policy
        admission = self._admission
        script_keys = {**_named_slot_keys(self._keys), **admission.named_keys()}
        priority, tenant = (claim.priority, claim.tenant) if claim else (PRIORITY_DEFAULT, None)
        args: dict[str, int | str] = {
            "limit": admission.limit(), "ttl_ms": self._ttl_ms, "token": token,
            "cooldown": self._cooldown_ms, "rpm": policy.requests_per_minute,
            "tpm": policy.tokens_per_minute,
            **admission.named_args(priority, tenant, (claim.cost if claim else None) or 1),
        }  # fmt: skip
        if claim is not None:
            script_keys |= {
                "running": keys.running(claim.task_id),
                "record": keys.task_record(claim.task_id),
            }
            args |= {
                "claim_token": claim.token,
                "claim_ttl_ms": claim.ttl_ms,
                "endpoint": claim.endpoint,
            }

        def acquire() -> SlotReply:
            return script_replies.slot_acquire(self._acquire(keys=script_keys, args=args))

        granted = admission.expect(token)
        answered = False
        try:
            while True:
                granted.clear()
                reply = ride_out(acquire, "its endpoint slot", policy.outage)
                if reply.answer is not SlotAnswer.NONE_FREE:
                    answered = True
                    break
                self._ensure_heartbeat()  # it renews this waiter's place too
                granted.wait()
        finally:
            if answered:
                admission.forget(token)
            else:  # interrupted while waiting: the place (or a slot handed over) goes on
                admission.leave(token)
        match reply.answer:
            case SlotAnswer.BREAKER_OPEN:
                raise circuit_open(reply.wait_ms / 1000)
            case SlotAnswer.RATE_LIMITED:
                raise rate_limited(reply.wait_ms / 1000)
            case SlotAnswer.CLAIMED_ELSEWHERE:
                raise AlreadyRunning()
            case SlotAnswer.CANCELLED:
                raise TaskCancelled("the task was cancelled before it ran")
        if reply.attempts:
            slot.attempt, slot.attempt_on_endpoint = reply.attempts
        self._held.add(token)
        self._ensure_heartbeat()
        return token

    def pick_replica(self, slot: Slot, affinity: str = "") -> None:
        """Choose the replica of a held pool slot (nothing without a pool), inside the slot's
        ``with`` block: :class:`CircuitOpenError` when no replica may take work (the block's
        end releases the slot). A healthy replica full (its breaker opened between the grant
        and the pick) is asked for again as calls end."""
        pool = self.pool
        if pool is None:
            return
        deadline = time.monotonic() + REPICK_FOR_S
        while True:
            replica, wait_ms = ride_out(
                lambda: pool.pick(slot.token, affinity), "picking its replica", self._policy.outage
            )
            if replica is not None:
                slot.replica = replica
                return
            if wait_ms != FULL:
                raise circuit_open(wait_ms / 1000)
            if time.monotonic() > deadline:
                raise circuit_open(1.0)
            self._stopped.wait(REPICK_EVERY_S)

    def _slot_keys(self, replica: int | None) -> list[str]:
        """The release's keys: for a pool's slot, its replica's breaker and probe."""
        if self.pool is None or replica is None:
            return list(self._keys)
        lease, _breaker, _probe, rate = self._keys
        return [lease, *self.pool.health_keys(replica), rate]

    def _release(self, token: str, slot: Slot) -> None:
        outcome = slot.outcome
        if self.pool is not None and slot.replica is None:
            outcome = Outcome.NEUTRAL  # no replica was called: no breaker to move
        args = {
            "token": token, "outcome": outcome.value,
            "threshold": self._policy.failure_threshold, "cooldown": self._cooldowns,
            "tokens": slot.tokens, "limit": self._admission.limit(),
            "every": self._admission.every, "queues": self._admission.queues,
            "sample": slot.sample,
        }  # fmt: skip
        script_keys = {
            **_named_slot_keys(self._slot_keys(slot.replica)),
            **self._admission.named_keys(),
        }
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
            where = "endpoint" if slot.replica is None else f"pool replica {slot.replica}"
            log.warning(
                "%s circuit breaker opened after %d consecutive failures; holding tasks "
                "back for %.1fs",
                where,
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
        self._renew(
            keys={"lease": self._keys[0]},
            args={"ttl_ms": self._ttl_ms, "running": len(running), "tokens": [*running, *ended]},
        )

    def close(self) -> None:
        self._stopped.set()
        self._admission.close()


def _named_slot_keys(slot_keys: list[str]) -> dict[str, str]:
    """An endpoint's (or a pool replica's) slot keys by the names the slot scripts give them."""
    return dict(zip(("lease", "breaker", "probe", "rate"), slot_keys, strict=True))
