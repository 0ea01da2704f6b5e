"""The gate a task passes before it seeks a slot of an endpoint whose pod genqueue runs.

The pod's state as genqueue knows it is a hash in Redis (:func:`worker.keys.pod`), shared by
every worker. A task finds it ``ready`` and goes on (noting the time: the pod is in use), or
waits: one worker, the holder of the pod's lock (:func:`worker.keys.pod_lock`), asks RunPod for
the pod's state, starts it if it is not running, reads the state back (RunPod may answer 200 to
a start that changed nothing: then it asks again), and probes the completions server until it
answers a one-token completion (a model loaded: text-generation-webui answers a plain-text 500
until then). Only then is the pod ``ready`` and the waiting tasks go on to their slots. A pod
that does not come up within ``pod_ready_timeout_s`` is ``failed``: the tasks waiting for it,
and those that come for the next :data:`FAILED_HOLD_S`, raise :class:`PodUnavailable` (they fall
back, or fail saying so). A task's own deadline still applies while it waits.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import redis

from worker import keys
from worker.endpoints.pods.control import RUNNING, PodControl
from worker.errors import DeadlineExpired, PodControlError, PodUnavailable

log = logging.getLogger("genqueue.pods")

#: How often a waiting task looks at the pod's state again, and the holder probes the pod.
POLL_S = 0.25
#: How long a pod that did not come up fails the tasks that come for it before one tries again.
FAILED_HOLD_S = 30.0
#: The lock of the acting worker: it lapses this long after its holder stops renewing it.
LOCK_TTL_S = 30.0
#: How many times a start that answered 200 and changed nothing is asked again.
START_TRIES = 5
#: How long an in-process ``ready`` is believed without reading Redis (offers in passing only).
READY_CACHE_S = 1.0
#: The pod's hash outlives its last change by this long.
STATE_TTL_S = 30 * 86_400

Decision = Callable[[str, str], None]  # (decision, reason): counted in the metrics


def now_ms() -> int:
    return int(time.time() * 1000)


class PodGate:
    """The pod of the endpoint ``endpoint_id``, as a task bound for it sees it.

    :param client: the Redis client.
    :param endpoint_id: the endpoint's name (see :mod:`worker.keys`).
    :param control: the pod's RunPod control calls.
    :param probe: whether the completions server answers a generation now.
    :param ready_timeout_s: the most a start may take, the model's load included.
    :param on_decision: counts each decision, with its reason.
    """

    def __init__(
        self,
        client: redis.Redis,
        endpoint_id: str,
        control: PodControl,
        probe: Callable[[], bool],
        ready_timeout_s: float,
        on_decision: Decision = lambda _decision, _reason: None,
    ) -> None:
        self.client = client
        self.endpoint = endpoint_id
        self.key = keys.pod(endpoint_id)
        self.lock_key = keys.pod_lock(endpoint_id)
        self.waiters_key = keys.pod_waiters(endpoint_id)
        self.control = control
        self.probe = probe
        self.ready_timeout_s = ready_timeout_s
        self._on_decision = on_decision
        self._ready_until = 0.0

    def decided(self, decision: str, reason: str) -> None:
        """Log and count one decision about the pod."""
        log.info("pod %s of endpoint %s: %s (%s)", self.control.pod_id, self.endpoint,
                 decision, reason)  # fmt: skip
        self._on_decision(decision, reason)

    def lock(self) -> redis.lock.Lock:
        return self.client.lock(self.lock_key, timeout=LOCK_TTL_S, thread_local=False)

    def is_open(self) -> bool:
        """Whether the pod is ready, from this process's last look if it is recent (no wait)."""
        if time.monotonic() < self._ready_until:
            return True
        try:
            state = self.client.hget(self.key, "state")
        except redis.RedisError:
            return False
        return self._seen(state)

    def wait(self, deadline: datetime | None) -> None:
        """Return once the pod is ready (at once if it is); start it if need be. Raises
        :class:`PodUnavailable` if it does not come up, :class:`DeadlineExpired` if the
        deadline passes first."""
        if self._pass():
            return
        waited = time.monotonic()
        token = uuid.uuid4().hex
        # Scored by when it joined, for the idle stop and the oldest-queued age.
        self.client.zadd(self.waiters_key, {token: now_ms()})
        self.client.pexpire(self.waiters_key, int(self.ready_timeout_s * 1000) + 60_000)
        try:
            while not self._pass():
                self._failed_lately()
                lock = self.lock()
                if lock.acquire(blocking=False):
                    # Brought up apart from any task, so that each waiter keeps its deadline.
                    threading.Thread(
                        target=self._bring_up, args=(lock,), name="genqueue-pod-start", daemon=True
                    ).start()
                _check_deadline(deadline)
                if time.monotonic() - waited > self.ready_timeout_s + LOCK_TTL_S:
                    raise PodUnavailable(self._not_up(f"within {self.ready_timeout_s:g}s"))
                time.sleep(POLL_S)
        finally:
            self.client.zrem(self.waiters_key, token)

    # ---- waiting

    def _pass(self) -> bool:
        """Whether the pod is ready, noting the call in the same transaction (the idle stop
        marks the pod ``stopping``, then reads the last call: a task either sees ``stopping``
        or its call is seen)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hget(self.key, "state")
        pipe.hset(self.key, "last_call_at", now_ms())
        pipe.expire(self.key, STATE_TTL_S)
        state, *_ = pipe.execute()
        return self._seen(state)

    def _seen(self, state: bytes | str | None) -> bool:
        ready = as_text(state) == "ready"
        self._ready_until = time.monotonic() + READY_CACHE_S if ready else 0.0
        return ready

    def _failed_lately(self) -> None:
        """Raise if the pod failed to come up in the last :data:`FAILED_HOLD_S`."""
        state, failed_at, reason = self.client.hmget(self.key, ["state", "failed_at", "reason"])
        if as_text(state) == "failed" and now_ms() - int(failed_at or 0) < FAILED_HOLD_S * 1000:
            raise PodUnavailable(self._not_up(as_text(reason) or "it failed to start"))

    def _not_up(self, why: str) -> str:
        return f"endpoint {self.endpoint}'s pod {self.control.pod_id} did not come up: {why}"

    # ---- the acting worker

    def _bring_up(self, lock: redis.lock.Lock) -> None:
        """Start the pod if it is not running and wait for its model; mark it ready or failed;
        give the lock back."""
        try:
            self._bring_up_locked(lock)
        except redis.RedisError as err:
            log.warning("pod %s: Redis failed while it started: %s", self.control.pod_id, err)
        finally:
            release_lock(lock)

    def _bring_up_locked(self, lock: redis.lock.Lock) -> None:
        begun = time.monotonic()
        known = {str(as_text(k)): str(as_text(v)) for k, v in self.client.hgetall(self.key).items()}
        if known.get("state") == "ready":
            return
        if known.get("state") == "failed" and now_ms() - int(known.get("failed_at") or 0) < (
            FAILED_HOLD_S * 1000
        ):
            return  # the waiters raise
        try:
            by = self._start(known)
            while not self.probe():
                lock.reacquire()
                if time.monotonic() - begun > self.ready_timeout_s:
                    raise PodControlError(
                        f"its model did not answer within {self.ready_timeout_s:g}s"
                    )
                time.sleep(POLL_S)
        except PodControlError as err:
            self.client.hset(
                self.key, mapping={"state": "failed", "failed_at": now_ms(), "reason": str(err)}
            )
            self.client.expire(self.key, STATE_TTL_S)
            self.decided("start_failed", str(err))
            return
        self.client.hset(
            self.key,
            mapping={"state": "ready", "ready_at": now_ms(), "by": by, "last_call_at": now_ms()},
        )
        self.client.expire(self.key, STATE_TTL_S)
        self.decided("ready", f"started by {by}, up after {time.monotonic() - begun:.1f}s")

    def _start(self, known: dict[str, str]) -> str:
        """Start the pod unless it runs; who started it (``genqueue``, or ``other``)."""
        status = self.control.status()
        if status == RUNNING:
            # Running, and not by a start of ours: a person (or another tool) started it.
            ours = known.get("by") == "genqueue" and known.get("state") != "stopped"
            by = "genqueue" if ours else "other"
            self.client.hset(self.key, mapping={"state": "starting", "by": by})
            return by
        waiting = self.client.zcard(self.waiters_key)
        self.client.hset(
            self.key, mapping={"state": "starting", "by": "genqueue", "started_at": now_ms()}
        )
        self.decided("start", f"{waiting} tasks wait and the pod is {status}")
        for attempt in range(1, START_TRIES + 1):
            self.control.start()
            status = self.control.status()
            if status == RUNNING:
                return "genqueue"
            if attempt < START_TRIES:
                self.decided("start_again", f"the start answered 200 and the pod is {status}")
                time.sleep(POLL_S * attempt)
        raise PodControlError(f"{START_TRIES} starts were accepted and the pod stayed {status}")


def _check_deadline(deadline: datetime | None) -> None:
    if deadline is not None and deadline <= datetime.now(UTC):
        raise DeadlineExpired(
            f"the deadline {deadline.isoformat()} passed while the endpoint's pod started"
        )


def release_lock(lock: redis.lock.Lock) -> None:
    with contextlib.suppress(redis.exceptions.LockError):  # it lapsed: nothing to give back
        lock.release()


def as_text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
