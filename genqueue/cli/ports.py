"""Whether an address genqueue must listen on is free, for ``genqueue api`` and ``genqueue up``."""

from __future__ import annotations

import errno
import socket

from worker.errors import PortInUse


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_free(host: str, port: int, what: str = "") -> None:
    """Raise :class:`PortInUse` if anything, another SO_REUSEPORT group of ours too, holds
    ``host:port``. ``what`` names the port in the message (``the API port 8000 ...``)."""
    with socket.socket(family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise port_in_use(err, host, port, what) from None


def port_in_use(err: OSError, host: str, port: int, what: str = "") -> PortInUse:
    """The error of a failed bind to ``host:port``."""
    name = f"{what} port" if what else "port"
    if err.errno == errno.EADDRINUSE:
        return PortInUse(f"{name} {port} on {host} is already in use ({err.strerror})")
    return PortInUse(f"cannot listen on {name} {port} on {host} ({err.strerror})")
