"""``genqueue submit`` and ``genqueue status``: a producer from the shell, over the HTTP API."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from api_producer.client import (
    GenQueueClient,
    GenQueueClientError,
    RequestRejected,
    Restart,
    TaskFailed,
    field_path,
)
from genqueue.cli.api_access import client_for, describe
from worker.contract import TaskStatus
from worker.errors import GenQueueError, InvalidRequest
from worker.settings import Settings

#: Requests per ``POST /v1/tasks/batch`` when submitting a file.
FILE_BATCH_SIZE = 100


def _print_status(status: TaskStatus) -> None:
    print(status.model_dump_json(), flush=True)


def _request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {"prompt": args.prompt}
    if args.system:
        request["system"] = args.system
    if args.template:
        request["template"] = args.template
    if args.max_tokens is not None:
        request["params"] = {"max_tokens": args.max_tokens}
    if getattr(args, "stream", False):
        request["stream"] = True
    return request


def file_error(err: OSError) -> str:
    """``requests.jsonl: No such file or directory``, not ``[Errno 2] ...``."""
    if err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err)


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The requests of a JSONL file with their line numbers; a bad line stops with its number."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise InvalidRequest(f"{path}:{number}: not JSON ({err.msg})") from None
            if not isinstance(value, dict):
                raise InvalidRequest(f"{path}:{number}: a request must be a JSON object")
            yield number, value


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    bar = "#" * filled + "-" * (width - filled)
    end = "\n" if done == total else ""
    print(f"\r[{bar}] {done}/{total}", end=end, file=sys.stderr, flush=True)


def submit(args: argparse.Namespace, settings: Settings) -> int:
    if (args.prompt is None) == (args.file is None):
        print("genqueue submit: give a PROMPT or --file, not both", file=sys.stderr)
        return 2
    try:
        with client_for(args, settings) as client:
            if args.file is not None:
                return _submit_file(client, Path(args.file), args)
            task_id = client.submit(_request_from_args(args))
            if args.stream:
                return _print_stream(client, task_id)
            if not args.wait:
                print(task_id)
                return 0
            _print_status(client.wait(task_id, timeout_s=args.timeout))
            return 0
    except TaskFailed as err:
        _print_status(err.status)
        return 1
    except GenQueueClientError as err:
        print(f"genqueue submit: {describe(err, args, settings)}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"genqueue submit: {file_error(err)}", file=sys.stderr)
        return 1
    except (GenQueueError, ValueError) as err:
        print(f"genqueue submit: {err}", file=sys.stderr)
        return 1


def _print_stream(client: GenQueueClient, task_id: str) -> int:
    """Print the task's tokens as they come (a restart starts a new line), then its end."""
    print(f"task {task_id}", file=sys.stderr)
    for item in client.stream(task_id):
        if isinstance(item, str):
            print(item, end="", flush=True)
        elif isinstance(item, Restart):
            print("\n[the call broke and is retried: the text starts again]", file=sys.stderr)
        else:
            print()
            if item.status.value != "succeeded":
                _print_status(item)
                return 1
    return 0


def file_problems(err: GenQueueClientError, path: Path, numbers: list[int]) -> str | None:
    """A refused batch's problems by the file's line numbers (``requests[2]`` of a batch that
    starts at line 1 is line 3), or ``None`` when the API named no request."""
    if not isinstance(err.detail, list):
        return None
    said = []
    for problem in err.detail:
        loc = list(problem.get("loc") or ()) if isinstance(problem, dict) else []
        if loc[:2] != ["body", "requests"] or len(loc) < 3 or not isinstance(loc[2], int):
            return None
        if not 0 <= loc[2] < len(numbers):
            return None
        where = field_path(loc[3:])
        message = str(problem.get("msg", "invalid"))
        said.append(f"{path}:{numbers[loc[2]]}: {where + ': ' if where else ''}{message}")
    return "\n".join(said) or None


def _submit_file(client: GenQueueClient, path: Path, args: argparse.Namespace) -> int:
    numbered = list(read_jsonl(path))
    requests_ = [request for _, request in numbered]
    task_ids: list[str] = []
    for start in range(0, len(requests_), FILE_BATCH_SIZE):
        try:
            task_ids += client.submit_batch(requests_[start : start + FILE_BATCH_SIZE])
        except RequestRejected as err:
            lines = [number for number, _ in numbered[start : start + FILE_BATCH_SIZE]]
            said = file_problems(err, path, lines)
            if said is None:
                raise
            before = f" ({len(task_ids)} requests before it were submitted)" if task_ids else ""
            print(f"genqueue submit: refused{before}:\n{said}", file=sys.stderr)
            return 1
        _progress(len(task_ids), len(requests_))
    if not args.wait:
        print("\n".join(task_ids))
        return 0
    failed = 0
    for done, task_id in enumerate(task_ids, start=1):
        try:
            _print_status(client.wait(task_id, timeout_s=args.timeout))
        except TaskFailed as err:
            failed += 1
            _print_status(err.status)
        _progress(done, len(task_ids))
    return 1 if failed else 0


def status(args: argparse.Namespace, settings: Settings) -> int:
    try:
        with client_for(args, settings) as client:
            _print_status(client.get(args.task_id, wait_s=args.wait))
    except GenQueueClientError as err:
        print(f"genqueue status: {describe(err, args, settings)}", file=sys.stderr)
        return 1
    return 0
