"""`genqueue api` and `genqueue up` refuse a taken port with the one error of the tree."""

from __future__ import annotations

import socket

import pytest

from genqueue.cli import ports
from genqueue.cli.api_processes import bind_sockets
from genqueue.errors import CommandError, PortInUse
from worker.errors import GenQueueError


def test_a_taken_port_is_one_error_for_api_and_up() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"the API port {port} on 127.0.0.1 is already in use"):
            ports.check_free("127.0.0.1", port, "the API")
        with pytest.raises(PortInUse, match=f"^port {port} on 127.0.0.1 is already in use"):
            bind_sockets("127.0.0.1", port, 2)
    assert issubclass(PortInUse, CommandError) and not issubclass(PortInUse, GenQueueError)


def test_errors_raised_on_purpose_are_in_the_tree() -> None:
    from api_producer.batches import BatchInvalid
    from api_producer.producers.enqueue import EnqueueError, IdempotencyConflict
    from api_producer.waiters import TooManyWaiters
    from genqueue.bench.config import BenchError
    from genqueue.errors import StartupFailed
    from worker.webhooks.url_check import WebhookRefused

    tree = (BatchInvalid, EnqueueError, IdempotencyConflict, TooManyWaiters)
    for cls in (*tree, WebhookRefused):
        assert issubclass(cls, GenQueueError), cls
    for cls in (BenchError, StartupFailed):  # the commands' own: no task fails with one
        assert issubclass(cls, CommandError) and not issubclass(cls, GenQueueError), cls
    # Still ValueErrors: a refused URL or batch is a value refused.
    assert issubclass(WebhookRefused, ValueError) and issubclass(BatchInvalid, ValueError)
