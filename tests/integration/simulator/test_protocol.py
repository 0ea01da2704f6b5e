"""HTTP/1.1 on the wire: body limits and keep-alive (genqueue.simulator.protocol)."""

from __future__ import annotations

import socket

from genqueue.simulator import RunningSimulator
from tests.integration.simulator.helpers import TIMEOUT


def test_oversized_body_is_413(sim: RunningSimulator) -> None:
    with socket.create_connection(("127.0.0.1", sim.port), timeout=TIMEOUT) as conn:
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 9000000\r\n\r\n")
        reply = conn.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413 ")


def test_keep_alive_serves_pipelined_requests(sim: RunningSimulator) -> None:
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    closing = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", sim.port), timeout=TIMEOUT) as conn:
        conn.sendall(request + request + closing)
        received = b""
        while chunk := conn.recv(65536):  # the server closes after the third answer
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert received.count(b"Connection: keep-alive\r\n") == 2
    assert received.count(b"Connection: close\r\n") == 1
