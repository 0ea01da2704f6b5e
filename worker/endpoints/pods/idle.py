"""The idle stop: a pod with no call for ``idle_stop_after_s`` is stopped, and the hours it ran.

Every worker looks every ``GENQUEUE_POD_CHECK_INTERVAL_S``; the one that takes the pod's lock
acts. A pod is never stopped while a call to it is in flight or a task waits for it (in its
endpoint's queue, its admission queue or at its gate), nor within ``idle_stop_after_s`` of
coming up (another process just started it), nor when a person started it (genqueue found it
running without having started it), unless ``stop_pods_started_by_others`` says so. A pod
stopped outside genqueue is noticed within :data:`VERIFY_LOOKS` looks. Before it
stops the pod it marks it ``stopping`` and looks again: a task that passed the gate meanwhile
(noting its call in the same transaction in which it read ``ready``) keeps the pod running. The
stop is read back as the start is.

Each look also adds the time since the last one to the pod's ``running_s`` while it runs, and
to its ``idle_s`` when nothing was in flight or waiting (each span counted once, whichever
worker counts it).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from worker import keys
from worker.endpoints.pods.control import RUNNING
from worker.endpoints.pods.gate import (
    LOCK_TTL_S,
    START_TRIES,
    STATE_TTL_S,
    PodGate,
    as_text,
    now_ms,
    release_lock,
)
from worker.errors import PodControlError
from worker.settings import default_of

#: How long closing waits for a look under way.
CLOSE_WAIT_S = 5.0
#: Every how many looks one worker asks RunPod whether a pod genqueue thinks ready still runs.
VERIFY_LOOKS = 6


@dataclass(frozen=True)
class IdlePolicy:
    idle_stop_after_s: float | None
    #: Stop a pod genqueue did not start, too.
    stop_others: bool = False
    check_interval_s: float = default_of("pod_check_interval_s")


def work_waiting(
    client: redis.Redis, endpoint: str, queues: Sequence[str], gate_wait_max_s: float
) -> str | None:
    """Why the endpoint is busy (a call in flight, tasks waiting), or ``None``; a task at the
    gate for longer than ``gate_wait_max_s`` counts no more (its worker died)."""
    now = now_ms()
    pipe = client.pipeline(transaction=False)
    pipe.zcount(keys.lease(endpoint), now, "+inf")
    pipe.zcard(keys.admission(endpoint))
    pipe.zcount(keys.pod_waiters(endpoint), now - int(gate_wait_max_s * 1000), "+inf")
    for name in keys.queue_lists(queues):
        pipe.llen(name)
    in_flight, admitting, at_gate, *queued = (int(n) for n in pipe.execute())
    if in_flight:
        return f"{in_flight} calls in flight"
    if admitting or at_gate:
        return f"{admitting + at_gate} tasks wait for a slot"
    if sum(queued):
        return f"{sum(queued)} tasks queued"
    return None


class IdleStop:
    """The idle stop of one endpoint's pod, in one worker process.

    :param gate: the pod's gate (its state, lock and control calls).
    :param policy: when to stop it.
    :param queues: the Celery queues whose tasks go to this endpoint.
    """

    def __init__(self, gate: PodGate, policy: IdlePolicy, queues: Sequence[str]) -> None:
        self._gate = gate
        self._client = gate.client
        self._policy = policy
        self._queues = list(queues)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_reason: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="genqueue-pod-idle", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop looking; wait for a look under way (its Redis client closes next)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(CLOSE_WAIT_S)

    def _loop(self) -> None:
        while not self._stopped.wait(self._policy.check_interval_s):
            try:
                self.check()
            except (redis.RedisError, PodControlError, OSError) as err:
                self._once("check_failed", f"{type(err).__name__}: {err}")

    def check(self) -> None:
        """One look: count the time, and stop the pod if it is idle."""
        busy = self._busy()
        state = self._count(busy)
        idle_after_s = self._policy.idle_stop_after_s
        if state.get("state") == "ready" and self._stopped_outside(state):
            return
        if state.get("state") != "ready" or idle_after_s is None:
            return
        if state.get("by") != "genqueue" and not self._policy.stop_others:
            self._once("keep", "a person started it: genqueue stops only pods it started")
            return
        if busy is not None:
            self._client.hset(self._gate.key, "last_call_at", now_ms())
            return
        if self._idle_s(state) < idle_after_s:
            return
        lock = self._gate.lock()
        if not lock.acquire(blocking=False):
            return  # another process starts or stops it now
        try:
            self._stop(idle_after_s)
        finally:
            release_lock(lock)

    def _stopped_outside(self, state: dict[str, str]) -> bool:
        """Every :data:`VERIFY_LOOKS` looks, one worker asks RunPod whether a ``ready`` pod
        still runs; one a person (or RunPod) stopped is marked ``stopped``, so that the next
        task starts it again."""
        every_ms = self._policy.check_interval_s * VERIFY_LOOKS * 1000
        if now_ms() - int(state.get("verified_at") or 0) < every_ms:
            return False
        lock = self._gate.lock()
        if not lock.acquire(blocking=False):
            return False
        try:
            self._client.hset(self._gate.key, "verified_at", now_ms())
            status = self._gate.control.status()
            if status == RUNNING or self._state().get("state") != "ready":
                return False
            self._client.hset(self._gate.key, mapping={"state": "stopped", "stopped_at": now_ms()})
            self._gate.decided("stopped_outside", f"the pod is {status}: stopped outside genqueue")
            return True
        finally:
            release_lock(lock)

    def _stop(self, idle_after_s: float) -> None:
        key = self._gate.key
        self._client.hset(key, "state", "stopping")
        state = self._state()
        busy = self._busy()
        idle_s = self._idle_s(state)
        if busy is not None or idle_s < idle_after_s:
            self._client.hset(key, "state", "ready")
            self._gate.decided("keep", busy or "a call came as it was about to stop")
            return
        control = self._gate.control
        status = RUNNING
        for _ in range(START_TRIES):
            control.stop()
            status = control.status()
            if status != RUNNING:
                break
        if status == RUNNING:
            # Asked again after another idle_stop_after_s, not at each look.
            self._client.hset(key, mapping={"state": "ready", "last_call_at": now_ms()})
            self._gate.decided("stop_failed", f"{START_TRIES} stops left the pod {status}")
            return
        self._client.hset(key, mapping={"state": "stopped", "stopped_at": now_ms()})
        self._client.expire(key, STATE_TTL_S)
        self._gate.decided("stop", f"no call for {idle_s:.0f}s, nothing in flight or waiting")

    def _busy(self) -> str | None:
        gate = self._gate
        return work_waiting(
            self._client, gate.endpoint, self._queues, gate.ready_timeout_s + LOCK_TTL_S
        )

    def _once(self, decision: str, reason: str) -> None:
        """Log and count a decision that each look would repeat only when it changes."""
        if reason != self._last_reason:
            self._last_reason = reason
            self._gate.decided(decision, reason)

    def _state(self) -> dict[str, str]:
        raw = self._client.hgetall(self._gate.key)
        return {str(as_text(k)): str(as_text(v)) for k, v in raw.items()}

    @staticmethod
    def _idle_s(state: dict[str, str]) -> float:
        last_ms = max(int(state.get("last_call_at") or 0), int(state.get("ready_at") or 0))
        return (now_ms() - last_ms) / 1000

    def _count(self, busy: str | None) -> dict[str, str]:
        """Add the span since the last count to the pod's running (and idle) seconds."""
        key = self._gate.key
        with self._client.pipeline() as pipe:
            try:
                pipe.watch(key)
                raw = pipe.hgetall(key)
                state = {str(as_text(k)): str(as_text(v)) for k, v in raw.items()}
                now = now_ms()
                counted = int(state.get("counted_at") or now)
                span_s = max(0.0, (now - counted) / 1000)
                pipe.multi()
                pipe.hset(key, "counted_at", now)
                pipe.expire(key, STATE_TTL_S)
                if state.get("state") in ("starting", "ready", "stopping") and span_s:
                    pipe.hincrbyfloat(key, "running_s", span_s)
                    if busy is None:
                        pipe.hincrbyfloat(key, "idle_s", span_s)
                pipe.execute()
            except redis.WatchError:
                pass  # another worker counted this span
        return state
