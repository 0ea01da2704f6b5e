"""The addresses genqueue listens on, for ``genqueue api``, ``up`` and ``flower``: whether one
is free, and whether one off loopback needs keys."""

from __future__ import annotations

import errno
import ipaddress
import socket

from genqueue.errors import PortInUse
from worker.settings import Settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def keys_required(settings: Settings, host: str) -> bool:
    """Whether an API on ``host`` must have a key: off loopback, unless told otherwise."""
    return not is_loopback(host) and not settings.api_insecure_no_auth


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
