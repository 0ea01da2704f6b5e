"""Celery's Redis result backend, with a state write that never overwrites a success.

Celery stores a task's state by reading the result key and, unless it holds ``SUCCESS``,
writing the new state: two round trips, and a success stored between them is overwritten.
genqueue stores a task's success itself, in the script that ends the task
(:mod:`worker.delivery.task_scripts`), and a retried task runs again while the run that asked for
the
retry is still storing its ``RETRY`` state: under load (a 2-core worker with hundreds of tasks
ready to run) the retry's read-then-write straddled the next run's success and the task
stayed ``RETRY`` for ever. This backend does the read and the write in one script.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

from worker import redis_sentinel

# KEYS: the result key. ARGV: the meta (JSON), its time to live (s, 0: none), SUCCESS.
# Writes and publishes the meta unless the key already holds a success; 1 if written.
STORE = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == ARGV[3] then return 0 end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class ResultBackend(RedisBackend):  # type: ignore[misc]
    """:class:`celery.backends.redis.RedisBackend`, whose task state writes are atomic."""

    _store_script: Any = None

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        self.ensure(self._store, (self.get_key_for_task(task_id), value))
        return result

    def _store(self, key: bytes | str, value: str | bytes) -> None:
        client = self.client
        if self._store_script is None or self._store_script.registered_client is not client:
            self._store_script = client.register_script(STORE)
        expires = int(self.expires or 0)
        self._store_script(keys=[key], args=[value, expires, states.SUCCESS])


class SentinelResultBackend(ResultBackend, SentinelBackend):  # type: ignore[misc]
    """:class:`ResultBackend` on the primary the sentinels name (``sentinel://``), whose
    connections reconnect when the primary they hold was demoted."""

    connection_class_ssl = redis_sentinel.FailoverSSLConnection

    def _get_pool(self, **params: Any) -> Any:
        params.setdefault("connection_class", redis_sentinel.FailoverConnection)
        return super()._get_pool(**params)
