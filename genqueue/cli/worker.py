"""``genqueue worker``: Celery worker processes on the gevent pool, one per core by default.

Each process holds ``GENQUEUE_WORKER_CONCURRENCY`` greenlets: the work is waiting on a GPU, so
one process serves hundreds of in-flight calls, and several processes use every core. This
module works out their command lines; :mod:`genqueue.cli.supervise` runs them (restarts a child
that dies, passes SIGINT or SIGTERM on and waits for the children).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import NoReturn

import redis

from api_producer.producers.submission import describe_redis_error
from worker import keys
from worker.endpoints.config import Endpoints
from worker.errors import SettingsError
from worker.redis_io import connections
from worker.settings import Settings


def worker_queues(endpoints: Endpoints, only: str | None = None) -> list[str]:
    """The queues a worker consumes: every endpoint's, or ``only`` that one's.

    Tasks that name no endpoint wait in genqueue's queue (and Celery's default one, for plain
    ``send_task``); a worker dedicated to the default endpoint takes those too.
    """
    if only is None:
        return keys.all_queues(endpoints.names)
    if only not in endpoints:
        known = ", ".join(endpoints.names)
        raise SettingsError(f"--endpoint {only!r} is not a configured endpoint ({known})")
    general = list(keys.GENERAL_QUEUES) if only == endpoints.default else []
    return [keys.queue_for(only), *general]


def worker_argv(
    settings: Settings, index: int, queues: list[str], hostname: str | None = None
) -> list[str]:
    """The command line of child ``index``: a Celery worker (:mod:`worker.process`)."""
    name = hostname or f"genqueue{index}@{socket.gethostname()}"
    return [
        sys.executable, "-m", "worker.process",
        "--pool", settings.worker_pool,
        "--concurrency", str(settings.worker_concurrency),
        "--queues", ",".join(queues),
        "--hostname", name,
        "--loglevel", settings.log_level,
    ]  # fmt: skip


def process_count(settings: Settings) -> int:
    return settings.worker_processes or os.cpu_count() or 1


def worker_argvs(
    settings: Settings, queues: list[str], hostname: str | None = None
) -> list[list[str]]:
    """The command lines of the worker processes: process 0 is ``hostname`` (when given),
    process N is ``N-hostname``."""
    argvs = []
    for index in range(process_count(settings)):
        name = None
        if hostname:
            name = hostname if index == 0 else f"{index}-{hostname}"
        argvs.append(worker_argv(settings, index, queues, name))
    return argvs


def redis_problems(settings: Settings) -> list[str]:
    """Why Redis (and the results' Redis, when apart) does not answer now, if it does not.

    The workers start anyway and keep trying, since Redis may come up after them; this says
    the reason once, in genqueue's words (a refused certificate, a sentinel that names no
    primary), where Celery's own retry lines may only say ``ConnectionError``.
    """
    targets = [("REDIS_URL", False)]
    if settings.results_apart:
        targets.append(("GENQUEUE_RESULT_REDIS_URL", True))
    problems = []
    for name, results in targets:
        client = connections.sync_client(
            settings, max_connections=1, socket_timeout_s=2, results=results
        )
        try:
            client.ping()
        except (redis.RedisError, OSError) as err:
            problems.append(f"{name}: {describe_redis_error(err)}")
        finally:
            client.close()
    return problems


def warn_redis_problems(settings: Settings) -> None:
    for problem in redis_problems(settings):
        print(
            f"genqueue worker: Redis does not answer yet ({problem}); the workers start and "
            "keep trying",
            file=sys.stderr,
        )


def exec_supervisor(argvs: list[list[str]]) -> NoReturn:
    """Replace this process with :mod:`genqueue.cli.supervise` running ``argvs``."""
    sys.stdout.flush()
    sys.stderr.flush()
    python = sys.executable
    os.execv(python, [python, "-m", "genqueue.cli.supervise", json.dumps(argvs)])
