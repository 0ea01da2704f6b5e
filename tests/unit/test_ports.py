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
