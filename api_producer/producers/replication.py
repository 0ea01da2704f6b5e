"""A submission's ``WAIT``: the replicas it reached before the API acknowledges it.

Redis replicates asynchronously, so a submission the primary acknowledged in the last moments
before it died is not on the replica Sentinel promotes: the caller holds a 202 for a task that
no longer exists (docs/redis.md). With ``GENQUEUE_REDIS_SUBMIT_REPLICAS`` (1 by default with a
Sentinel ``REDIS_URL``) each submission's transaction is followed by ``WAIT``, so a task is
acknowledged once a replica has it. A ``WAIT`` that times out short of them still accepts the
task (it is on the primary, and will run there) and says so in the log; for the next
:data:`RECHECK_S` the process's submissions do not wait (a primary whose replicas are gone,
such as one just promoted, would otherwise hold every submission for the whole timeout).
"""

from __future__ import annotations

import logging
import time

from worker.settings import Settings

log = logging.getLogger("genqueue.api")

#: How long submissions skip the wait after one fell short of its replicas.
RECHECK_S = 10.0


class SubmitWait:
    """How many replicas this process's next submission waits for, and what came of it."""

    def __init__(self, settings: Settings) -> None:
        self._wanted = settings.submit_replicas
        self.timeout_ms = settings.redis_submit_wait_ms
        self._short_until = 0.0

    def replicas(self) -> int:
        """The replicas to ``WAIT`` for now (0: none)."""
        return 0 if time.monotonic() < self._short_until else self._wanted

    def reached(self, count: int) -> None:
        if count >= self._wanted:
            return
        self._short_until = time.monotonic() + RECHECK_S
        log.warning(
            "a submission reached %d of %d Redis replicas within %d ms "
            "(GENQUEUE_REDIS_SUBMIT_REPLICAS): accepted, but a failover now could lose it; "
            "submissions do not wait for %.0f s",
            count,
            self._wanted,
            self.timeout_ms,
            RECHECK_S,
        )
