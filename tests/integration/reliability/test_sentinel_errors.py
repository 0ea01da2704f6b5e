"""worker.redis_io.redis_sentinel against a real Redis: a sentinel that answers with an error is
passed over (the pure parts: tests/unit/worker/redis_io/test_redis_sentinel.py)."""

from __future__ import annotations

from urllib.parse import urlsplit

from genqueue.embedded_redis import free_port
from tests.unit.worker.redis_io.test_redis_sentinel import _no_primary_errors
from worker.settings import Settings


def test_a_sentinel_that_answers_an_error_is_passed_over(redis_url: str) -> None:
    """redis-py 8.2 asks the next sentinel when one answers with an error, as when it cannot be
    reached: here a plain Redis, which knows no ``SENTINEL`` command, then nothing at all."""
    plain = urlsplit(redis_url)
    nothing = free_port()
    url = f"sentinel://{plain.hostname}:{plain.port}/0;sentinel://127.0.0.1:{nothing}"
    settings = Settings(redis_url=url, redis_sentinel_password=plain.password)
    for err in _no_primary_errors(settings):
        text = str(err)
        assert f"sentinel {plain.hostname}:{plain.port} - unknown command" in text.lower(), text
        assert f"sentinel 127.0.0.1:{nothing} - Error 111 connecting to" in text, text
