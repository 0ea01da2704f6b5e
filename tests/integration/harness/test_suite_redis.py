"""The suite's Redis fixture leaves a Redis it did not start alone (tests/suite_redis.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from genqueue.embedded_redis import EmbeddedRedis
from tests.suite_redis import DATABASES, TEST_REDIS_VARIABLE, NoFreeDatabase, suite_redis

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def someone_elses_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis holding a user's keys in every database 0-15."""
    with EmbeddedRedis(tmp_path / "theirs") as server:
        for database in DATABASES:
            client = redis.Redis.from_url(f"redis://{server.host}:{server.port}/{database}")
            client.set(f"user-data:{database}", "keep me")
            client.close()
        yield server


def _their_keys(server: EmbeddedRedis) -> dict[int, list[bytes]]:
    keys = {}
    for database in DATABASES:
        client = redis.Redis.from_url(f"redis://{server.host}:{server.port}/{database}")
        keys[database] = sorted(client.keys("*"))
        client.close()
    return keys


def _use_a_database(databases) -> str:
    url = databases.take()
    client = redis.Redis.from_url(url)
    client.set("written-by-a-test", "1")
    client.close()
    databases.give_back(url)
    return url


def test_by_default_the_suite_starts_its_own_redis_and_ignores_redis_url(
    someone_elses_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    theirs = f"redis://{someone_elses_redis.host}:{someone_elses_redis.port}"
    environ = {"REDIS_URL": f"{theirs}/0"}  # a user's own setting: not for the tests
    with suite_redis(environ, tmp_path / "suite") as databases:
        assert databases.owned
        assert databases.base_url != theirs
        for _ in range(20):
            _use_a_database(databases)
    assert _their_keys(someone_elses_redis) == {
        database: [f"user-data:{database}".encode()] for database in DATABASES
    }


def test_an_outside_redis_is_used_only_when_named_and_only_its_empty_databases(
    someone_elses_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    theirs = f"redis://{someone_elses_redis.host}:{someone_elses_redis.port}"
    emptied = redis.Redis.from_url(f"{theirs}/7")
    emptied.flushdb()
    emptied.close()
    with suite_redis({TEST_REDIS_VARIABLE: f"{theirs}/0"}, tmp_path / "suite") as databases:
        assert not databases.owned
        assert databases.base_url == theirs
        assert {_use_a_database(databases) for _ in range(5)} == {f"{theirs}/7"}
        held = databases.take()
        with pytest.raises(NoFreeDatabase, match="no empty database"):
            databases.take()
        databases.give_back(held)
    keys = _their_keys(someone_elses_redis)
    assert keys.pop(7) == []
    assert keys == {database: [f"user-data:{database}".encode()] for database in keys}
