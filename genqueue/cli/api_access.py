"""How the ``genqueue`` commands reach the HTTP API: its URL, the key, and errors in words.

The URL is ``--api``, else ``GENQUEUE_API_URL`` (which ``genqueue up`` writes to its env file),
else http://127.0.0.1:8000. The key is ``--key``, else ``GENQUEUE_API_KEY`` (the env file's,
when ``up`` runs in this folder), else the first of ``GENQUEUE_API_KEYS``.
"""

from __future__ import annotations

import argparse

import requests

from api_producer.client import GenQueueClient, GenQueueClientError, Unauthorized
from genqueue.cli.env_file import env_file_of
from worker.settings import Settings


def add_api_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api",
        default=None,
        help="the API's base URL (default GENQUEUE_API_URL, or genqueue up's)",
    )
    parser.add_argument(
        "--key",
        default=None,
        help="the API key (default GENQUEUE_API_KEY: genqueue up's, read from its env file; "
        "else the first of GENQUEUE_API_KEYS)",
    )


def api_url(args: argparse.Namespace, settings: Settings) -> str:
    return str(args.api or settings.api_url)


def api_key(args: argparse.Namespace, settings: Settings) -> str | None:
    if args.key:
        return str(args.key)
    if settings.api_key is not None:
        return settings.api_key.get_secret_value()
    return settings.api_keys[0].get_secret_value() if settings.api_keys else None


def client_for(args: argparse.Namespace, settings: Settings) -> GenQueueClient:
    return GenQueueClient(api_url(args, settings), api_key=api_key(args, settings))


def describe(err: GenQueueClientError, args: argparse.Namespace, settings: Settings) -> str:
    """What went wrong, and for a refused key or an API that is not there, what to do."""
    if isinstance(err, Unauthorized):
        what = "refused the key" if api_key(args, settings) else "wants a key"
        return (
            f"the API {what} (401): give its key with --key KEY "
            f"or GENQUEUE_API_KEY (genqueue up writes its key to "
            f"{env_file_of(settings.data_dir)}, read by commands run in this folder)"
        )
    if isinstance(err.__cause__, requests.ConnectionError):
        return (
            f"cannot reach the API at {api_url(args, settings)}: is genqueue up (or genqueue "
            "api) running? --api or GENQUEUE_API_URL names another"
        )
    return str(err)
