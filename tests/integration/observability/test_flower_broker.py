"""Flower and Celery's own commands count and empty what genqueue sorted into a queue's backlog
(worker/delivery/backlog.py), not only the queue's Redis lists."""

from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis
import requests
from celery import Celery

from genqueue import flower_app
from tests.integration.security.helpers import run_flower
from worker import keys, lua
from worker.contract import QUEUE_NAME
from worker.delivery import backlog
from worker.delivery.broker import UNREADABLE_MAX

pytestmark = pytest.mark.timeout(90)

SORTED, UNSORTED = 30, 5


def _fill(redis_url: str) -> redis.Redis:
    """SORTED plain Celery messages sorted into the backlog, UNSORTED more left in the list."""
    celery = Celery(broker=redis_url, set_as_current=False)
    request = {"prompt": "q", "tenant": "batch"}
    for _ in range(SORTED):
        celery.send_task("genqueue.generate", args=[request], queue=QUEUE_NAME)
    client = redis.Redis.from_url(redis_url)
    sort = lua.register(client, "worker.delivery", "backlog_sort")
    moved, _left = sort(
        keys=[keys.unreadable(), QUEUE_NAME],
        args=[backlog.SORT_MAX, UNREADABLE_MAX, backlog.DEFAULT_TENANT, ""],
    )
    assert moved == SORTED
    for _ in range(UNSORTED):
        celery.send_task("genqueue.generate", args=[request], queue=QUEUE_NAME)
    celery.close()
    assert client.llen(QUEUE_NAME) == UNSORTED
    assert client.llen(keys.backlog(QUEUE_NAME, "batch")) == SORTED
    return client


def test_flowers_broker_page_counts_the_backlog(redis_url, tmp_path: Path) -> None:
    _fill(redis_url)
    with run_flower(redis_url, tmp_path, FLOWER_BASIC_AUTH="ops:secret") as flower:
        response = requests.get(
            f"{flower.url}/api/queues/length", auth=("ops", "secret"), timeout=10
        )
        assert response.status_code == 200, response.text
        answer = response.json()
    counted = {queue["name"]: queue["messages"] for queue in answer["active_queues"]}
    assert counted[QUEUE_NAME] == SORTED + UNSORTED


def test_celery_purge_empties_the_backlog_and_queue_declare_counts_it(redis_url) -> None:
    client = _fill(redis_url)
    env = {**os.environ, "REDIS_URL": redis_url}
    env.pop("GENQUEUE_ENDPOINTS_FILE", None)
    inspect = (
        "from worker.celery_app import app\n"
        "with app.connection_for_write() as conn:\n"
        f"    print(conn.default_channel.queue_declare({QUEUE_NAME!r}, passive=True)"
        ".message_count)\n"
    )
    counted = subprocess.run(
        [sys.executable, "-c", inspect], env=env, capture_output=True, text=True, timeout=30
    )
    assert counted.stdout.strip() == str(SORTED + UNSORTED), counted.stderr
    purge = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "purge", "-f",
         "-Q", QUEUE_NAME],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert f"Purged {SORTED + UNSORTED} messages" in purge.stdout, purge.stdout + purge.stderr
    assert client.keys("genqueue:backlog*") == []
    assert client.llen(QUEUE_NAME) == 0


def test_the_replaced_flower_method_is_flowers_tested_one() -> None:
    """Flower's count this module replaces is still the one it was written against."""
    source = textwrap.dedent(inspect.getsource(flower_app.FLOWERS_QUEUES))
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == "65cc61e0aa41b63b"
