"""`genqueue api` and `genqueue up` refuse a taken port with the one error of the tree."""

from __future__ import annotations

import socket

import pytest

from genqueue.cli import ports
from genqueue.cli.api_processes import bind_sockets
from worker.errors import GenQueueError, PortInUse


def test_a_taken_port_is_one_error_for_api_and_up() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=f"the API port {port} on 127.0.0.1 is already in use"):
            ports.check_free("127.0.0.1", port, "the API")
        with pytest.raises(PortInUse, match=f"^port {port} on 127.0.0.1 is already in use"):
            bind_sockets("127.0.0.1", port, 2)
    assert issubclass(PortInUse, GenQueueError)


def test_errors_raised_on_purpose_are_in_the_tree() -> None:
    from api_producer.batches import BatchInvalid
    from api_producer.producers.enqueue import EnqueueError, IdempotencyConflict
    from api_producer.waiters import TooManyWaiters
    from genqueue.bench.config import BenchError
    from worker.errors import StartupFailed
    from worker.webhooks.url_check import WebhookRefused

    tree = (BatchInvalid, EnqueueError, IdempotencyConflict, TooManyWaiters, BenchError)
    for cls in (*tree, StartupFailed, WebhookRefused):
        assert issubclass(cls, GenQueueError), cls
    # Still ValueErrors: pydantic turns WebhookRefused into a validation error.
    assert issubclass(WebhookRefused, ValueError) and issubclass(BatchInvalid, ValueError)
