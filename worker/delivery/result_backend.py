"""Celery's Redis result backend, with a state write that never overwrites a success.

Celery stores a task's state by reading the result key and, unless it holds ``SUCCESS``,
writing the new state: two round trips, and a success stored between them is overwritten.
genqueue stores a task's success itself, in the script that ends the task
(:mod:`worker.delivery.task_scripts`), and a retried task runs again while the run that asked
for the retry is still storing its ``RETRY`` state: under load (a 2-core worker with hundreds of
tasks ready to run) the retry's read-then-write straddled the next run's success and the task
stayed ``RETRY`` for ever. This backend does the read and the write in one script
(``scripts/store_result.lua``).
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

from worker import lua
from worker.redis_io import redis_sentinel

#: The Celery methods this module copies (``_store_result``, ``set``: the meta and its key, SET
#: with a time to live and PUBLISH) or plugs into (worker.celery_app overrides ``_get_backend``),
#: and a digest of their source in the Celery of worker.upstream.TESTED.
UPSTREAM_COPIES = {
    "celery.backends.redis:RedisBackend._store_result": "f43059ebe446d43d",
    "celery.backends.redis:RedisBackend.set": "a6ef6953d47016a1",
    "celery.app.base:Celery._get_backend": "6f001ce2e6085fff",
}


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
            self._store_script = lua.named(client, "worker.delivery", "store_result")
        expires = int(self.expires or 0)
        self._store_script(
            keys={"result_key": key},
            args={"meta": value, "ttl_s": expires, "success": states.SUCCESS},
        )


class SentinelResultBackend(ResultBackend, SentinelBackend):  # type: ignore[misc]
    """:class:`ResultBackend` on the primary the sentinels name (``sentinel://``), whose
    connections reconnect when the primary they hold was demoted."""

    connection_class_ssl = redis_sentinel.FailoverSSLConnection

    def _get_pool(self, **params: Any) -> Any:
        params.setdefault("connection_class", redis_sentinel.FailoverConnection)
        return super()._get_pool(**params)
