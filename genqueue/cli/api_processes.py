"""Several ``genqueue api`` processes, each on its own SO_REUSEPORT listening socket.

With one socket shared by every process (uvicorn's ``workers=``), whichever process wakes
first accepts a whole burst of new connections: 32 keep-alive clients split anywhere from
16/16 to 31/1 between two processes, and the busy one sets the p99. Here the parent binds one
socket per process on the same address with ``SO_REUSEPORT``, and Linux spreads new
connections across them by a hash of the client's address and port.

The parent keeps every socket open and hands socket *i* to child *i* (``pass_fds``), so a
child that dies is started again on the same socket and the connections queued on it meanwhile
wait instead of being reset. The parent is :class:`genqueue.cli.supervise.Supervisor`, as for
``genqueue worker``: SIGINT or SIGTERM is passed to every child (uvicorn's graceful shutdown)
and the parent waits for them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import sys

from genqueue.cli import ports
from genqueue.cli.supervise import Policy, Supervisor
from genqueue.errors import PortInUse

#: The exit status of a child whose app did not start (starting it again would fail alike).
STARTUP_FAILURE = 3
#: The parent waits up to ``stop_timeout_s`` for its children after a signal, then kills them.
API_POLICY = Policy(
    name="genqueue api", fatal_exit=STARTUP_FAILURE, fatal_status=1, stop_timeout_s=15.0
)
BACKLOG = 2048


def reuseport_supported() -> bool:
    """Whether the kernel balances connections across SO_REUSEPORT sockets (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on ``host:port``, each with SO_REUSEPORT.

    Raises :class:`PortInUse` if the address is taken.
    """
    sockets: list[socket.socket] = []
    try:
        if port != 0:
            ports.check_free(host, port)
        for _ in range(count):
            sock = socket.socket(ports.family(host), socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            # Port 0: every other socket joins the port the kernel chose for the first.
            port = sock.getsockname()[1]
            sock.listen(BACKLOG)
            sock.set_inheritable(True)
    except OSError as err:
        for sock in sockets:
            sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ports.port_in_use(err, host, port) from err
        raise
    return sockets


def serve_processes(host: str, port: int, count: int, log_level: str) -> int:
    """Serve the API from ``count`` processes on ``host:port``; the exit status."""
    try:
        sockets = bind_sockets(host, port, count)
    except PortInUse as err:
        print(f"genqueue api: {err}", file=sys.stderr)
        return 1
    port = sockets[0].getsockname()[1]
    argvs = [
        [sys.executable, "-m", "genqueue.cli.api_processes",
         str(os.getpid()), str(sock.fileno()), host, str(port), log_level]
        for sock in sockets
    ]  # fmt: skip
    try:
        return Supervisor(argvs, API_POLICY, [(sock.fileno(),) for sock in sockets]).run()
    finally:
        for sock in sockets:
            sock.close()


_PR_SET_PDEATHSIG = 1


def _exit_with_parent(parent_pid: int) -> None:
    """Have the kernel send SIGTERM when the parent dies, so no orphan keeps the port."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl
        sys.exit(0)


def _child(parent_pid: int, fd: int, host: str, port: int, log_level: str) -> int:
    """One process: the app from the environment, served on the inherited socket ``fd``."""
    _exit_with_parent(parent_pid)
    import uvicorn

    from api_producer.main import app_from_environment
    from worker.config.settings_loading import load_settings

    sock = socket.socket(fileno=fd)
    try:
        app = app_from_environment(require_keys=ports.keys_required(load_settings(), host))
    except Exception as err:  # reported; the parent stops every process
        print(f"genqueue api: the app could not start: {err}", file=sys.stderr, flush=True)
        return STARTUP_FAILURE
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0 if server.started else STARTUP_FAILURE


if __name__ == "__main__":
    parent_arg, fd_arg, host_arg, port_arg, level_arg = sys.argv[1:6]
    sys.exit(_child(int(parent_arg), int(fd_arg), host_arg, int(port_arg), level_arg))
