"""``genqueue batch``: submit a JSONL file as one batch, watch it, fetch its results, cancel it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from api_producer.client import GenQueueClient, GenQueueClientError
from genqueue.cli.api_access import add_api_options, client_for, describe
from genqueue.cli.shell import _progress, file_error
from worker.settings import Settings

#: How often ``submit --wait`` asks for the batch's counts: every second, and less often for
#: big batches (the API reads every task to count them, ~2 s for 50,000).
POLL_INTERVAL_S = 1.0
POLL_TASKS_PER_S = 10_000
FINAL_STATES = ("completed", "cancelled")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    batch = sub.add_parser(
        "batch",
        help="submit a JSONL file as one batch, follow it, fetch its results",
        description="Batch jobs over the API at --api with the key of --key (both read from "
        "genqueue up's env file by default). A batch file has one request a line, each with a "
        "string custom_id; results come back in input order.",
    )
    actions = batch.add_subparsers(dest="action", required=True, metavar="ACTION")
    submit = actions.add_parser("submit", help="upload FILE as one batch; print its id")
    submit.add_argument("file", help="a JSONL file: one request a line, each with custom_id")
    submit.add_argument("--wait", action="store_true", help="show progress until it is done")
    submit.add_argument(
        "--timeout", type=float, default=0.0, help="seconds --wait waits (0: no limit)"
    )
    status = actions.add_parser("status", help="print a batch's state and counts as JSON")
    status.add_argument("batch_id")
    results = actions.add_parser("results", help="write a batch's results as JSONL")
    results.add_argument("batch_id")
    results.add_argument("-o", "--output", help="a file to write (default stdout)")
    cancel = actions.add_parser("cancel", help="cancel a batch's unfinished tasks")
    cancel.add_argument("batch_id")
    for action in (submit, status, results, cancel):
        add_api_options(action)
    batch.set_defaults(handler=run_batch)


def run_batch(args: argparse.Namespace, settings: Settings) -> int:
    try:
        with client_for(args, settings) as client:
            if args.action == "submit":
                return _submit(client, Path(args.file), args.wait, args.timeout)
            if args.action == "status":
                _print_json(client.get_batch(args.batch_id))
                return 0
            if args.action == "results":
                return _results(client, args.batch_id, args.output)
            _print_json(client.cancel_batch(args.batch_id))
            return 0
    except GenQueueClientError as err:
        print(f"genqueue batch {args.action}: {describe(err, args, settings)}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"genqueue batch {args.action}: {file_error(err)}", file=sys.stderr)
        return 1


def _print_json(value: Any) -> None:
    print(json.dumps(value), flush=True)


def _submit(client: GenQueueClient, path: Path, wait: bool, timeout_s: float) -> int:
    data = path.read_bytes()
    print(f"uploading {path} ({len(data)} bytes)...", file=sys.stderr, flush=True)
    accepted = client.create_batch(data)
    print(accepted["batch_id"], flush=True)
    if not wait:
        return 0
    status = _follow(client, accepted["batch_id"], accepted["total"], timeout_s)
    print(json.dumps(status["counts"]), file=sys.stderr, flush=True)
    if status["status"] not in FINAL_STATES:
        print(f"genqueue batch submit: still {status['status']}", file=sys.stderr)
        return 1
    return 0 if status["counts"]["succeeded"] == status["total"] else 1


def _follow(client: GenQueueClient, batch_id: str, total: int, timeout_s: float) -> dict[str, Any]:
    """Poll the batch until it is done (or ``timeout_s`` passed), drawing a progress bar."""
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
    interval_s = max(POLL_INTERVAL_S, total / POLL_TASKS_PER_S)
    while True:
        status = client.get_batch(batch_id)
        counts = status["counts"]
        done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
        _progress(done, total)
        if done >= total or (deadline is not None and time.monotonic() >= deadline):
            if done < total:
                print(file=sys.stderr)
            return status
        time.sleep(interval_s)


def _results(client: GenQueueClient, batch_id: str, output: str | None) -> int:
    if output is None:
        count = _write_results(client, batch_id, sys.stdout)
    else:
        # Write to a side file first: a download cut short never looks like a complete one.
        target = Path(output)
        partial = target.with_name(target.name + ".part")
        with partial.open("w", encoding="utf-8") as out:
            count = _write_results(client, batch_id, out)
        partial.replace(target)
    print(f"{count} results", file=sys.stderr)
    return 0


def _write_results(client: GenQueueClient, batch_id: str, out: TextIO) -> int:
    count = 0
    for line in client.batch_results(batch_id):
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        count += 1
    out.flush()
    return count
