"""The ``genqueue`` command line. Each subcommand's ``--help`` explains it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from genqueue.cli.api_access import add_api_options
from genqueue.cli.env_file import CommandSettings, load_command_settings
from worker.errors import SettingsError
from worker.settings import Settings

Handler = Callable[[argparse.Namespace, Settings], int]

#: The commands that start their own Redis and endpoint, and so read no env file of ``up``.
OWN_STACK = frozenset({"up", "bench", "simulate"})
#: The commands that read Redis: each says which one, unless REDIS_URL was set explicitly.
READS_REDIS = frozenset({"worker", "api", "flower", "dead", "status"})
_ENV_FILE_HELP = (
    "read the settings genqueue up wrote there (default: GENQUEUE_DATA_DIR/env, "
    "i.e. .genqueue/env, when it exists); variables set in the environment win"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genqueue",
        description="A job queue in front of GPU-hosted language models.",
    )
    parser.add_argument("--env-file", type=Path, default=None, help=_ENV_FILE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="run the whole service on this machine",
        description="Start Redis (embedded unless REDIS_URL is set), the simulator (unless "
        "RUNPOD_ENDPOINT_URL or GENQUEUE_ENDPOINTS_FILE names an endpoint; each endpoint is "
        "checked, as by genqueue check), a worker, the API and Flower. Ctrl-C stops them all. "
        "Other genqueue commands run in this folder find it through GENQUEUE_DATA_DIR/env. "
        "The terminal shows where each runs, the generated credentials and a line per finished "
        "task; each component's own output goes to GENQUEUE_DATA_DIR/logs/<name>.log "
        "(redis, simulator, worker, api, flower), and a component that dies is reported with "
        "its exit status and the last lines of its log.",
    )
    up.add_argument("--api-port", type=int, default=8000, help="API port (default 8000)")
    up.add_argument("--flower-port", type=int, default=5555, help="Flower port (default 5555)")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    up.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show every component's output on the terminal too (still written to its log)",
    )
    up.set_defaults(handler=_run_up)

    worker = sub.add_parser(
        "worker",
        help="run Celery workers that serve genqueue.generate",
        description="Start GENQUEUE_WORKER_PROCESSES Celery worker processes (0: one per core) "
        "on the GENQUEUE_WORKER_POOL pool with GENQUEUE_WORKER_CONCURRENCY slots each.",
    )
    worker.add_argument("--hostname", help="Celery node name (default genqueueN@host)")
    worker.add_argument(
        "--endpoint",
        metavar="NAME",
        help="serve only the tasks of this configured endpoint (default: all of them)",
    )
    worker.set_defaults(handler=_run_worker)

    api = sub.add_parser("api", help="run the HTTP API", description="Serve the HTTP API.")
    api.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    api.set_defaults(handler=_run_api)

    flower = sub.add_parser(
        "flower",
        help="run Flower on genqueue's Celery app",
        description="Start Flower with basic auth from FLOWER_BASIC_AUTH (required beyond "
        "loopback) and its state kept on disk. Other FLOWER_* variables are honoured.",
    )
    flower.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    flower.add_argument("--port", type=int, default=5555, help="port (default 5555)")
    flower.set_defaults(handler=_run_flower)

    simulate = sub.add_parser(
        "simulate",
        help="run the built-in completions endpoint simulator",
        description="A fake text-generation-webui /v1/completions server for trying genqueue "
        "without a GPU, with latency, one-at-a-time mode and injected failures.",
    )
    simulate.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    simulate.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    simulate.add_argument("--latency", type=float, default=0.0, help="seconds per completion")
    simulate.add_argument(
        "--one-at-a-time", action="store_true", help="serve one generation at a time"
    )
    simulate.add_argument("--fail-rate", type=float, default=0.0, help="fraction that fail")
    simulate.add_argument("--fail-status", type=int, default=500, help="status of failures")
    simulate.add_argument(
        "--batch-knee", type=int, default=0,
        help="play a batching server: up to this many generations at once each take --latency, "
        "more run slower (0: off; POST /_sim/config {\"batch_knee\": N} moves it mid-run)",
    )  # fmt: skip
    simulate.add_argument(
        "--batch-slowdown", type=float, default=1.5,
        help="past the knee, each generation slows by (running / knee) ** this (default 1.5)",
    )  # fmt: skip
    simulate.set_defaults(handler=_run_simulate)

    submit = sub.add_parser(
        "submit",
        help="submit a prompt (or a JSONL file of requests) through the API",
        description="Submit PROMPT, or every line of --file (JSON requests), to the API at "
        "--api with the key of --key (both read from genqueue up's env file by default).",
    )
    submit.add_argument("prompt", nargs="?", help="the prompt text")
    submit.add_argument("--file", help="a JSONL file of requests, one JSON object a line")
    submit.add_argument("--system", help="system message")
    submit.add_argument("--template", default=None, help="prompt template (default chatml)")
    submit.add_argument("--max-tokens", type=int, default=None, help="max_tokens")
    submit.add_argument("--wait", action="store_true", help="wait for the result and print it")
    submit.add_argument(
        "--stream", action="store_true", help="stream the answer: print tokens as they come"
    )
    submit.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits")
    add_api_options(submit)
    submit.set_defaults(handler=_run_submit)

    status = sub.add_parser(
        "status",
        help="print a task's status, or watch the whole service",
        description="With TASK_ID, print that task's status as JSON (over the API). Without, "
        "a live view read from Redis (REDIS_URL): queue depth, calls in flight, the circuit "
        "breaker, dead letters and what ended in the last minute, refreshed every 2 s.",
    )
    status.add_argument("task_id", nargs="?", help="the task id (omit for the live view)")
    status.add_argument("--once", action="store_true", help="live view: print once and exit")
    add_api_options(status)
    status.add_argument(
        "--json", action="store_true", help="live view: print it once as JSON (for scripts)"
    )
    status.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the end")
    status.set_defaults(handler=_run_status)

    from genqueue.cli.dead import add_parser as add_dead_parser

    add_dead_parser(sub)

    from genqueue.cli.batch import add_parser as add_batch_parser

    add_batch_parser(sub)

    from genqueue.cli.usage import add_parser as add_usage_parser

    add_usage_parser(sub)

    from genqueue.cli.check import add_parser as add_check_parser

    add_check_parser(sub)

    bench = sub.add_parser(
        "bench",
        help="measure throughput, overhead and latency against the simulator",
        description="Benchmarks genqueue side by side with bare Celery on this machine "
        "(see BENCHMARKS.md). Uses REDIS_URL when set, else an embedded Redis.",
    )
    bench.set_defaults(handler=_run_bench)
    _add_bench_arguments(bench)
    _add_env_file_option(sub)
    return parser


def _add_env_file_option(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``--env-file`` after any command too (``genqueue status --once --env-file F``)."""
    for name, command in sub.choices.items():
        if name in OWN_STACK:
            continue
        nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        for action in nested:
            _add_env_file_option(action)
        if not nested:
            command.add_argument(
                "--env-file", type=Path, default=argparse.SUPPRESS, help=_ENV_FILE_HELP
            )


def _add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    try:
        from genqueue.bench import add_arguments
    except ImportError:
        return
    add_arguments(parser)


def _run_bench(args: argparse.Namespace, settings: Settings) -> int:
    from genqueue.bench import run_bench

    return run_bench(args, settings)


def _run_up(args: argparse.Namespace, settings: Settings) -> int:
    from genqueue.cli.up import run_up

    return run_up(
        settings,
        host=args.host,
        api_port=args.api_port,
        flower_port=args.flower_port,
        verbose=args.verbose,
    )


def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from genqueue.cli.worker import (
        exec_supervisor,
        warn_redis_problems,
        worker_argvs,
        worker_queues,
    )
    from worker.endpoints.config import require_endpoints
    from worker.tenancy.tenants import load_tenants

    load_tenants(settings)  # an invalid tenants file stops the workers here, file:line: field

    queues = worker_queues(require_endpoints(settings), only=args.endpoint)
    warn_redis_problems(settings)
    exec_supervisor(worker_argvs(settings, queues, hostname=args.hostname))


def _run_api(args: argparse.Namespace, settings: Settings) -> int:
    from genqueue.cli.api import serve

    return serve(settings, host=args.host, port=args.port)


def _run_flower(args: argparse.Namespace, settings: Settings) -> int:
    from genqueue.cli.flower import run_flower

    return run_flower(settings, host=args.host, port=args.port)


def _run_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from genqueue.simulator import SimulatorConfig, run

    config = SimulatorConfig(
        latency_s=args.latency,
        one_at_a_time=args.one_at_a_time,
        fail_rate=args.fail_rate,
        fail_status=args.fail_status,
        batch_knee=args.batch_knee,
        batch_slowdown=args.batch_slowdown,
    )
    run(args.host, args.port, config)
    return 0


def _run_submit(args: argparse.Namespace, settings: Settings) -> int:
    from genqueue.cli.shell import submit

    return submit(args, settings)


def _run_status(args: argparse.Namespace, settings: Settings) -> int:
    if args.task_id is None:
        from genqueue.cli.status_view import run_status_view

        return run_status_view(settings, once=args.once, note=args.redis_note, as_json=args.json)
    from genqueue.cli.shell import status

    return status(args, settings)


def _redis_note(args: argparse.Namespace, loaded: CommandSettings) -> str | None:
    """Which Redis the command reads, when it reads one that REDIS_URL did not name."""
    if args.command not in READS_REDIS or getattr(args, "task_id", None) is not None:
        return None
    return loaded.redis_note()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.env_file is not None and args.command in OWN_STACK:
        parser.error(f"genqueue {args.command} makes its own Redis and reads no --env-file")
    try:
        loaded = load_command_settings(args.env_file, read_env_file=args.command not in OWN_STACK)
        args.redis_note = _redis_note(args, loaded)
        if args.redis_note and args.command != "status":  # the status view shows it itself
            print(f"genqueue {args.command}: {args.redis_note}", file=sys.stderr, flush=True)
        return int(args.handler(args, loaded.settings))
    except SettingsError as err:
        print(f"genqueue: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
