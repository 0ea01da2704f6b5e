"""The supervisor of ``genqueue worker``'s processes, on the standard library alone.

``genqueue worker`` works out each child's ``celery worker`` command line, then replaces itself
(``exec``) with ``python -m genqueue.supervise '<JSON list of command lines>'``: the same
process id, so signals reach it as before, but without the settings, pydantic and the rest in
memory (about 10 MB instead of 60; BENCHMARKS.md counts the whole process tree).

A child that dies is started again; SIGINT or SIGTERM is passed to every child (Celery's warm
shutdown: tasks in flight finish, the rest go back to the queue) and the supervisor waits for
them. A child that exits with :data:`CONFIG_ERROR_EXIT` (invalid settings) stops them all.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from types import FrameType

RESTART_DELAY_S = 1.0
#: The exit status of a worker whose settings are invalid.
CONFIG_ERROR_EXIT = 2
_POLL_S = 0.2


class Supervisor:
    """Starts one child per command line, restarts any that die, stops them all on a signal."""

    def __init__(self, argvs: list[list[str]]) -> None:
        self._argvs = argvs
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = False

    def _spawn(self, index: int) -> None:
        self._children[index] = subprocess.Popen(self._argvs[index])

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True
        for child in self._children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for index in range(len(self._argvs)):
            self._spawn(index)
        while True:
            time.sleep(_POLL_S)
            if self._stopping:
                break
            for index, child in list(self._children.items()):
                if child.poll() == CONFIG_ERROR_EXIT:
                    # Invalid settings: starting again would fail the same way.
                    self._on_signal(signal.SIGTERM, None)
                    return self._wait_all() or CONFIG_ERROR_EXIT
                if child.returncode is not None:
                    print(
                        f"genqueue worker: process {index} exited with {child.returncode}; "
                        "starting it again",
                        file=sys.stderr,
                        flush=True,
                    )
                    time.sleep(RESTART_DELAY_S)
                    self._spawn(index)
        return self._wait_all()

    def _wait_all(self) -> int:
        status = 0
        for child in self._children.values():
            try:
                child.wait()
            except KeyboardInterrupt:
                child.kill()
                child.wait()
            status = status or (child.returncode if child.returncode > 0 else 0)
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
        print("usage: python -m genqueue.supervise '<JSON list of command lines>'", file=sys.stderr)
        return 2
    try:
        argvs = parse_argvs(args[0])
    except ValueError as err:
        print(f"genqueue.supervise: {err}", file=sys.stderr)
        return 2
    return Supervisor(argvs).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
