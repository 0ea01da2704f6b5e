"""One worker process: Celery's worker on genqueue's app, started without Celery's command line.

``celery worker`` builds the whole ``celery`` umbrella command before it starts, with every
plugin command installed beside it (Flower and Tornado, Prometheus' client, click-repl and
prompt_toolkit): 14 MB in each worker process that a worker never uses. ``genqueue worker``
starts its processes with this module, which takes the few options it passes and starts the
same ``app.Worker`` that ``celery worker`` starts. ``celery -A worker.celery_app worker`` still
works, with Celery's own options.

Usage: ``python -m worker.process --pool gevent --concurrency 500 --queues q1,q2
--hostname name@host --loglevel INFO``. Task events are on, gossip and mingle off.
"""

from __future__ import annotations

import argparse
import sys

#: The pools of ``GENQUEUE_WORKER_POOL`` (:data:`worker.settings.WorkerPool`).
POOLS = ("gevent", "threads", "prefork", "solo")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker.process", description=__doc__)
    parser.add_argument("--pool", required=True, choices=POOLS)
    parser.add_argument("--concurrency", required=True, type=int)
    parser.add_argument("--queues", required=True, help="comma-separated queue names")
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--loglevel", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    options = parse(argv)
    if options.pool == "gevent":
        # Before anything imports socket, ssl or threading: what `celery worker -P gevent` does.
        from gevent import monkey

        monkey.patch_all()
    from celery import concurrency

    concurrency.get_implementation(options.pool)

    from worker.celery_app import app

    worker = app.Worker(
        hostname=options.hostname,
        pool_cls=options.pool,
        concurrency=options.concurrency,
        queues=[name for name in options.queues.split(",") if name],
        loglevel=options.loglevel,
        task_events=True,
        without_gossip=True,
        without_mingle=True,
    )
    worker.start()
    return int(worker.exitcode or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
