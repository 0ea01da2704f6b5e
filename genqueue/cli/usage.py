"""``genqueue usage``: the caller's usage by UTC day and endpoint, over the HTTP API."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from api_producer.client import GenQueueClientError
from genqueue.cli.api_access import add_api_options, client_for, describe
from worker.settings import Settings

COLUMNS = (
    ("date", 10), ("tenant", 16), ("endpoint", 12), ("succeeded", 9), ("failed", 6),
    ("cancelled", 9), ("prompt_tokens", 13), ("completion_tokens", 17), ("gpu_seconds", 11),
)  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    usage = sub.add_parser(
        "usage",
        help="print the caller's usage by day and endpoint",
        description="Tasks by outcome, tokens and GPU-seconds by UTC day and endpoint, from the "
        "API at --api with the key of --key (both read from genqueue up's env file by default); "
        "an admin key gets every tenant's.",
    )
    usage.add_argument("--from", dest="first", help="first UTC day, YYYY-MM-DD (default: to)")
    usage.add_argument("--to", dest="last", help="last UTC day, YYYY-MM-DD (default: today)")
    usage.add_argument("--tenant", help="admins: one tenant's usage")
    usage.add_argument("--json", action="store_true", help="print the API's JSON answer")
    add_api_options(usage)
    usage.set_defaults(handler=run_usage)


def run_usage(args: argparse.Namespace, settings: Settings) -> int:
    try:
        with client_for(args, settings) as client:
            report = client.usage(args.first, args.last, args.tenant)
    except GenQueueClientError as err:
        print(f"genqueue usage: {describe(err, args, settings)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(table(report["usage"]))
    return 0


def _cells(row: dict[str, Any]) -> list[str]:
    tasks = row["tasks"]
    return [
        row["date"], row["tenant"], row["endpoint"], str(tasks.get("succeeded", 0)),
        str(tasks.get("failed", 0)), str(tasks.get("cancelled", 0)), str(row["prompt_tokens"]),
        str(row["completion_tokens"]), f"{row['gpu_seconds']:.3f}",
    ]  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a plain text table, one line each, under a header."""
    lines = ["  ".join(name.ljust(width) for name, width in COLUMNS).rstrip()]
    for row in rows:
        cells = zip(_cells(row), COLUMNS, strict=True)
        lines.append("  ".join(cell.ljust(width) for cell, (_, width) in cells).rstrip())
    if not rows:
        lines.append("(no usage in these days)")
    return "\n".join(lines)
