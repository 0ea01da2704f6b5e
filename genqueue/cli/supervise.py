"""The process supervisor of ``genqueue worker`` and ``genqueue api``, on the standard library.

``genqueue worker`` works out each child's command line (:mod:`worker.process`), then replaces
itself (``exec``) with ``python -m genqueue.cli.supervise '<JSON list of command lines>'``: the same
process id, so signals reach it as before, but without the settings, pydantic and the rest in
memory (about 10 MB instead of 60; BENCHMARKS.md counts the whole process tree).
``genqueue api`` runs a :class:`Supervisor` over its uvicorn processes in the same way
(:mod:`genqueue.cli.api_processes`), each child with its own listening socket.

A child that dies is started again; SIGINT or SIGTERM is passed to every child (a warm
shutdown: Celery lets tasks in flight finish, uvicorn the requests) and the supervisor waits
for them. A child that exits with the fatal status (a worker's invalid settings, an app that
cannot start: starting it again would fail the same way) stops them all.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

RESTART_DELAY_S = 1.0
#: The exit status of a worker whose settings are invalid.
CONFIG_ERROR_EXIT = 2
_POLL_S = 0.2


@dataclass(frozen=True)
class Policy:
    """What a supervisor calls itself, and how it treats its children's ends."""

    #: The command in messages ("genqueue worker").
    name: str
    #: A child exiting with this stops every child: starting it again would fail alike.
    fatal_exit: int
    #: The supervisor's own exit status then; None: the children's (or ``fatal_exit``).
    fatal_status: int | None = None
    #: How long to wait for the children after a signal before killing them; None: for ever.
    stop_timeout_s: float | None = None


WORKER_POLICY = Policy(name="genqueue worker", fatal_exit=CONFIG_ERROR_EXIT)


class Supervisor:
    """Starts one child per command line, restarts any that die, stops them all on a signal.

    :param argvs: the children's command lines.
    :param pass_fds: for each child, the file descriptors it inherits (a listening socket).
    """

    def __init__(
        self,
        argvs: Sequence[Sequence[str]],
        policy: Policy = WORKER_POLICY,
        pass_fds: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self._argvs = argvs
        self._policy = policy
        self._pass_fds = pass_fds or [() for _ in argvs]
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = False

    def _spawn(self, index: int) -> None:
        self._children[index] = subprocess.Popen(
            self._argvs[index], pass_fds=tuple(self._pass_fds[index])
        )

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True
        for child in self._children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def _say(self, message: str) -> None:
        print(f"{self._policy.name}: {message}", file=sys.stderr, flush=True)

    def run(self) -> int:
        """Supervise until a signal or a fatal exit; the exit status."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for index in range(len(self._argvs)):
            self._spawn(index)
        while not self._stopping:
            time.sleep(_POLL_S)
            for index, child in list(self._children.items()):
                if self._stopping or child.poll() is None:
                    continue
                if child.returncode == self._policy.fatal_exit:
                    self._say(f"process {index} could not start; stopping")
                    self._on_signal(signal.SIGTERM, None)
                    status = self._wait_all()
                    fatal = self._policy.fatal_status
                    return fatal if fatal is not None else status or self._policy.fatal_exit
                self._say(f"process {index} exited with {child.returncode}; starting it again")
                time.sleep(RESTART_DELAY_S)
                if not self._stopping:
                    self._spawn(index)
        return self._wait_all()

    def _wait_all(self) -> int:
        """Wait for every child (killing those still there after the stop timeout); the
        first positive exit status among them, or 0."""
        timeout_s = self._policy.stop_timeout_s
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        status = 0
        for child in self._children.values():
            try:
                child.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                child.kill()
                child.wait()
            status = status or max(child.returncode, 0)
        return status


def parse_argvs(text: str) -> list[list[str]]:
    """The command lines from their JSON form; ``ValueError`` if it is anything else."""
    argvs = json.loads(text)
    if not (
        isinstance(argvs, list)
        and argvs
        and all(isinstance(a, list) and a and all(isinstance(s, str) for s in a) for a in argvs)
    ):
        raise ValueError("expected a non-empty JSON list of non-empty lists of strings")
    return argvs


def main(args: list[str]) -> int:
    if len(args) != 1:
        print(
            "usage: python -m genqueue.cli.supervise '<JSON list of command lines>'",
            file=sys.stderr,
        )
        return 2
    try:
        argvs = parse_argvs(args[0])
    except ValueError as err:
        print(f"genqueue.cli.supervise: {err}", file=sys.stderr)
        return 2
    return Supervisor(argvs).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
