"""Which worker processes are alive, as Redis sees them: by their open connection.

A slot's lease lapses after its TTL when its process stops renewing it. That is too slow for a
killed worker (the slot idles for up to a lease TTL: 30 s) and too quick for a stalled one (a
process stopped by ``SIGSTOP``, or by a long pause of its host, whose call is still running at
the endpoint: a slot given away then lets one call too many reach it). The two differ in one
thing Redis knows: a killed process's connections are closed by its kernel at once, a stalled
one's stay open.

So each worker process holds one connection of its own, named ``genqueue-proc:<id>``
(``CLIENT SETNAME``), and names its leases and admission waiters ``<id>.<random>``. A sweep
(``scripts/lease_sweep.lua``, run by the admission listener when its grant list is quiet and by
each lease heartbeat) reads the names of the open connections (``CLIENT LIST``) and

- frees at once the leases and the waiters of a process whose connection is gone (known dead),
  so that its slots go to the next waiters within a sweep;
- keeps the leases of a process whose connection is open but which has missed its own renewal
  (stalled): they are renewed on its behalf, so the cap holds until it wakes or dies.

Where ``CLIENT LIST`` is refused (a managed Redis that forbids it), the sweep falls back to the
leases' TTL alone, as before.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from typing import Any

import redis

log = logging.getLogger(__name__)

#: The name prefix of a worker process's presence connection.
NAME_PREFIX = "genqueue-proc:"
#: How often the presence connection is checked (and reconnected if Redis dropped it).
CHECK_EVERY_S = 1.0


class Presence:
    """This process's presence connection and id (one per process: :func:`for_process`)."""

    def __init__(self, client: redis.Redis) -> None:
        self.id = uuid.uuid4().hex[:16]
        self._client = client
        self._connection: Any = None
        self._stopped = threading.Event()
        try:  # before any token is handed out, so that no sweep takes this process for dead
            self._connect()
        except (redis.RedisError, OSError) as err:
            log.warning("no presence connection yet (%s); trying again", type(err).__name__)
        self._thread = threading.Thread(target=self._keep, name="genqueue-presence", daemon=True)
        self._thread.start()

    def token(self) -> str:
        """A new lease or waiter token of this process."""
        return f"{self.id}.{uuid.uuid4().hex}"

    def _connect(self) -> None:
        pool = self._client.connection_pool
        kwargs = {**pool.connection_kwargs, "client_name": NAME_PREFIX + self.id}
        connection = pool.connection_class(**kwargs)
        connection.connect()
        self._connection = connection

    def _keep(self) -> None:
        while not self._stopped.is_set():
            try:
                if self._connection is None:
                    self._connect()
                self._connection.send_command("PING")
                self._connection.read_response()
            except (redis.RedisError, OSError, TypeError, ValueError) as err:
                log.debug("presence connection: %s; connecting again", type(err).__name__)
                if self._connection is not None:
                    self._connection.disconnect()
                self._connection = None
            self._stopped.wait(CHECK_EVERY_S)

    def close(self) -> None:
        """Stop the presence (the process is then taken for dead)."""
        self._stopped.set()
        self._thread.join(CHECK_EVERY_S * 2)
        if self._connection is not None:
            self._connection.disconnect()


_lock = threading.Lock()
_by_pid: dict[int, Presence] = {}


def for_process(client: redis.Redis) -> Presence:
    """This process's presence (started on first use; a forked child has its own)."""
    pid = os.getpid()
    with _lock:
        found = _by_pid.get(pid)
        if found is None:
            found = _by_pid[pid] = Presence(client)
        return found


def live_ids(client: redis.Redis) -> set[str] | None:
    """The ids of the worker processes whose presence connection is open; None if Redis
    refuses to list its connections (the sweep then relies on TTLs alone)."""
    try:
        clients: list[dict[str, Any]] = client.client_list(_type="normal")
    except redis.ResponseError:
        return None
    names = (str(entry.get("name") or "") for entry in clients)
    return {name[len(NAME_PREFIX) :] for name in names if name.startswith(NAME_PREFIX)}
