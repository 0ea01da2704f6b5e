"""The errors of the ``genqueue`` commands, apart from the task error tree (:mod:`worker.errors`).

The tree::

    CommandError
    ├── PortInUse          an address genqueue api or up must listen on is taken
    ├── StartupFailed      a process genqueue up or the embedded Redis starts died
    │   │                  or did not answer in time
    │   ├── ComponentDied      genqueue/cli/up_output.py
    │   └── DataFolderInUse    genqueue/cli/data_lock.py
    └── BenchError         genqueue bench cannot go on (genqueue/bench/config.py)

A command catches them to print their message and exit; no task ever fails with one, so none is
a :class:`worker.errors.GenQueueError`. This module imports nothing of genqueue.
"""

from __future__ import annotations


class CommandError(Exception):
    """Base class of the errors a ``genqueue`` command stops on; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PortInUse(CommandError):
    """Raised when ``genqueue api`` or ``genqueue up`` cannot listen on its address."""


class StartupFailed(CommandError):
    """Raised when a process ``genqueue up`` (or the embedded Redis) starts died or did not
    answer in time; the message names it and where its log is."""
