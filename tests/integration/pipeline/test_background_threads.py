"""One lease heartbeat and one cancel listener per process, however many tasks start at once.

``Thread.start()`` waits for the new thread to run and, under gevent, lets other greenlets run
meanwhile: a check-then-start without a lock started one heartbeat per task that began in that
window (hundreds at a worker's start, each renewing every lease).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

TIMEOUT_S = 20


HEARTBEATS = textwrap.dedent(
    """
    from gevent import monkey; monkey.patch_all()
    import sys, threading, gevent, redis
    from worker.limits.guard import EndpointGuard, GuardPolicy

    guard = EndpointGuard(redis.Redis.from_url(sys.argv[1]), "ep", GuardPolicy(limit=50))
    def task():
        with guard.slot():
            gevent.sleep(0.5)
    gevent.joinall([gevent.spawn(task) for _ in range(50)], timeout=10)
    print(sum(t.name == "genqueue-lease-heartbeat" for t in threading.enumerate()))
    """
)


def test_tasks_taking_slots_at_once_under_gevent_start_one_lease_heartbeat(
    redis_url: str,
) -> None:
    assert _run(HEARTBEATS, redis_url) == "1"


def _run(script: str, redis_url: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, redis_url], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


LISTENERS = textwrap.dedent(
    """
    from gevent import monkey; monkey.patch_all()
    import sys, threading, gevent, redis
    from worker.delivery.heartbeat import RunningTasks

    running = RunningTasks(redis.Redis.from_url(sys.argv[1]), claim_ttl_s=20)
    def task(n):
        with running.cancellable(f"t{n}"):
            gevent.sleep(0.5)
    gevent.joinall([gevent.spawn(task, n) for n in range(50)], timeout=10)
    print(sum(t.name == "genqueue-cancel-listener" for t in threading.enumerate()))
    """
)


def test_tasks_starting_at_once_under_gevent_start_one_cancel_listener(redis_url: str) -> None:
    assert _run(LISTENERS, redis_url) == "1"
