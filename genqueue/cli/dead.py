"""``genqueue dead``: inspect and requeue dead-lettered tasks."""

from __future__ import annotations

import argparse
import json
import sys

import redis
from pydantic import ValidationError

from api_producer.producers.direct import DirectProducer, EnqueueError
from worker.contract import GenerationRequest
from worker.delivery.dead_letters import DeadLetters
from worker.redis_io import connections
from worker.settings import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dead = sub.add_parser(
        "dead",
        help="list or requeue dead-lettered tasks",
        description="Tasks whose worker died on every delivery (GENQUEUE_MAX_DELIVERIES) end "
        "failed with type 'poison' and land in a dead-letter list in Redis. List them, or "
        "send one (or all) again under the same task id.",
    )
    actions = dead.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="print the dead letters as JSON lines")
    listing.add_argument("--limit", type=int, default=100, help="newest N (default 100)")
    requeue = actions.add_parser("requeue", help="send dead-lettered tasks again")
    requeue.add_argument("task_ids", nargs="*", help="task ids to requeue")
    requeue.add_argument("--all", action="store_true", help="requeue every dead letter")
    dead.set_defaults(handler=run_dead)


def run_dead(args: argparse.Namespace, settings: Settings) -> int:
    client = connections.sync_client(settings, max_connections=4)
    letters = DeadLetters(client, settings.dead_letter_max)
    try:
        if args.action == "list":
            for entry in letters.entries(args.limit):
                print(json.dumps(entry))
            return 0
        return _requeue(args, settings, client, letters)
    except redis.RedisError as err:
        print(f"genqueue dead: Redis error: {type(err).__name__}", file=sys.stderr)
        return 1
    finally:
        client.close()


def _requeue(
    args: argparse.Namespace, settings: Settings, client: redis.Redis, letters: DeadLetters
) -> int:
    task_ids = args.task_ids
    if args.all:
        task_ids = [entry["task_id"] for entry in letters.entries(settings.dead_letter_max)]
    if not task_ids:
        print("genqueue dead requeue: give task ids or --all", file=sys.stderr)
        return 2
    producer = DirectProducer(settings, client)
    failed = 0
    for task_id in task_ids:
        entry = letters.take(task_id)
        if entry is None:
            print(f"{task_id}: not in the dead-letter list", file=sys.stderr)
            failed += 1
            continue
        try:
            producer.requeue(task_id, GenerationRequest.model_validate(entry["request"]))
        except (ValidationError, EnqueueError) as err:
            letters.add(task_id, entry["request"], entry["reason"])  # keep it
            print(f"{task_id}: not requeued: {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"{task_id}: requeued")
    return 1 if failed else 0
